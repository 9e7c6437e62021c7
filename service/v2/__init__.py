"""The KServe v2 / Open Inference Protocol: Triton's clients, perf_analyzer and KServe speak it.

- :mod:`service.v2.rest`: the HTTP routes under ``/v2``, a second front-end on the core;
- :mod:`service.v2.grpc`: the same over gRPC (``GRPCInferenceService``), on its own port;
- :mod:`service.v2.tensors`: infer requests and responses as bytes (JSON, binary extension);
- :mod:`service.v2.outputs`: a model's v2 outputs, diagnostics included;
- :mod:`service.v2.metadata`: server and model metadata, Triton's model config.
"""
