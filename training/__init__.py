"""Training of the product's models (not part of the ``hecktor`` package; it has its own image).

Segmentation: nnU-Net v2 with this product's networks, losses and ROI (``python -m training --help``).
Tasks 2/3: ``train_clinical_models.py``. Everything imports the container's own code from ``hecktor``.
"""
