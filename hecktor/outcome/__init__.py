"""The predict stage: Tasks 2 and 3 from the clinical record, the measurements and (optionally) the images.

- :mod:`hecktor.outcome.predict`: the clinical models (JSON, numpy only): features, linear and tree-ensemble
  runtimes, the Task 2/3 answer from them.
- :mod:`hecktor.outcome.features`: the image network's clinical vector and its scaling.
- :mod:`hecktor.outcome.inputs`: the network's inputs (lesion-centred CT/PET patch, GTVp/GTVn masks) from the ROI
  and a label image, and the discrete-time hazard -> risk arithmetic; numpy only, used by training and the
  container alike.
- :mod:`hecktor.outcome.runtime`: loading the manifest's ``outcome_network`` (ONNX through onnxruntime, or
  safetensors through :mod:`hecktor.outcome.torch_backend`) and the pipeline's choice between it and the clinical
  models, with the fallback on any failure.
- :mod:`hecktor.outcome.torch_backend`: the network in torch (MONAI's 3-D ResNet-18, lesion-guidance module,
  clinical MLP, RFS hazard and HPV heads); the only modules here that import torch.
"""
