"""The measure stage: lesion volumes and SUV figures (``lesions``) and the optional radiomics (``radiomics``)."""
