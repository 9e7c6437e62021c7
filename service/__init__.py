"""The FastAPI + ONNX Runtime pooling service (issue #5: not built yet)."""
