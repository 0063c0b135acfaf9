"""The outcome network in torch (its definition and a runner for safetensors weights); training and the torch
flavour use it, the ONNX path does not."""
