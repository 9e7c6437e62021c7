"""Benchmarks, each on this machine in one run:

- ``make bench`` (``python -m bench.serve``): the service under load beside raw ONNX Runtime;
- ``python -m bench.compare``: the service against the servers a user would otherwise deploy
  (``bench.peers``: naive FastAPI, LitServe, Triton through PyTriton), with a py-spy profile;
- ``python -m bench.gpu OUT``: ONNX Runtime's CUDA paths on a GPU machine (skips without one).
"""
