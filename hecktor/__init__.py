"""HECKTOR 2025 head-and-neck FDG-PET/CT inference: segmentation (Task 1), RFS risk (Task 2), HPV status (Task 3)."""

__version__ = "0.1.0"
