"""ONNX export of trained models (issue #4: not built yet)."""
