"""AdaPool Serve: pooled vectors, per-token pooling weights and signal/noise diagnostics over HTTP.

Three layers, dependencies pointing down:

- front-ends: :mod:`service.api` (the /pool API: routes, content negotiation, error bodies),
  :mod:`service.codecs` (request and answer formats);
- the core: :mod:`service.core` (models, readiness, admission, batching, diagnostics; no HTTP);
- the backend: ONNX Runtime (:mod:`service.core.backend`), the model repository's contract
  (:mod:`modelrepo`).

:mod:`service.app` builds the app, :mod:`service.__main__` runs it (``python -m service``) on
the server of :mod:`service.server`; settings in :mod:`service.settings`, metrics in
:mod:`service.metrics`, errors in :mod:`service.errors`. The service never imports torch.
"""
