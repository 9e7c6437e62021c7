"""Benchmarks, each on this machine in one run:

- ``make bench`` (``python -m bench.serve``): the service under load beside raw ONNX Runtime;
- ``python -m bench.compare``: the service against the servers a user would otherwise deploy
  (``bench.peers``: naive FastAPI, LitServe, Triton through PyTriton), with a py-spy profile;
- ``make bench-memory`` (``python -m bench.memory [--baseline DIR]``): RSS and ms per model run
  against tokens and batch size, the server, the issue-15 probe, ONNX Runtime's arena options;
- ``make attention`` (``python -m bench.attention``): the encoder attention candidates;
- ``python -m bench.gpu OUT``: ONNX Runtime's CUDA paths on a GPU machine (skips without one);
- ``python -m bench.gpu_all run OUT`` (``bash bench/gpu_run.sh`` on a lent machine): every GPU
  measurement of issue 23 in one call within a time budget.
"""
