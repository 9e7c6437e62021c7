"""The serving core: it never sees an HTTP request.

- :mod:`service.core.runtime`: :class:`Runtime`, the model lifecycle and the one pool call;
- :mod:`service.core.calls`: what a front-end hands the core and gets back;
- :mod:`service.core.models`: the served versions, found in the model repository;
- :mod:`service.core.batching`: the dynamic batcher (admission, queue, merged runs);
- :mod:`service.core.backend`: ONNX Runtime sessions;
- :mod:`service.core.diagnostics`: per-item signal/noise diagnostics from the weights.
"""
