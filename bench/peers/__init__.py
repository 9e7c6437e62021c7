"""The servers ``python -m bench.compare`` measures ours against, each a small program that serves
one ``model.onnx`` through the service's own ONNX Runtime backend
(``service.core.backend.OnnxBackend``, CPU, the service's session options), so only the serving
around the model differs:

- ``naive``: FastAPI with a pydantic body of nested float lists, one model run per request;
- ``litserve_peer``: LitServe (PyPI ``litserve``) with its batching on;
- ``triton_peer``: Triton Inference Server through PyTriton (PyPI ``nvidia-pytriton``) with its
  dynamic batcher; it needs numpy < 2, so it runs in a virtual environment of its own
  (``bench.peers.envs``).

Each answers with the pooled vectors and the head-mean pooling weights of every item.
"""
