"""DICOM input: series discovery and selection, volume assembly, and SUV from the PET header tags."""
