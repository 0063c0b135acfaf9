"""Tasks 2 and 3 from images: the seed-000 multimodal network (optional; the clinical models are the default).

Modules (only ``network`` and ``torch_runner`` import torch; nothing here is imported by ``import hecktor``):

- :mod:`hecktor.outcome.inputs`: the network's inputs (lesion-centred CT/PET patch, GTVp/GTVn masks, clinical
  vector) from the ROI and a label image, and the discrete-time hazard -> risk arithmetic; numpy only, used by
  training and the container alike.
- :mod:`hecktor.outcome.network`: the network (MONAI's 3-D ResNet-18, lesion-guidance module, clinical MLP, RFS
  hazard and HPV heads); torch.
- :mod:`hecktor.outcome.runtime`: loading the manifest's ``outcome_network`` (ONNX through onnxruntime, or
  safetensors through :mod:`hecktor.outcome.torch_runner`) and the pipeline's choice between it and the clinical
  models, with the fallback on any failure.
"""
