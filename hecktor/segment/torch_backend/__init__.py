"""The torch backend: network definitions, the torch sliding window, safetensors members and the ONNX export.

The only part of the segment stage that imports torch; nothing outside it imports it at module level.
"""
