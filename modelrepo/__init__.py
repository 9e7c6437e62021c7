"""The model repository's contract, shared by export (the writer) and the service (the reader).

Standard library and NumPy only: the service imports it without torch.

    <repository>/<name>/config.pbtxt                  Triton's model config
    <repository>/<name>/<version>/model.onnx          the graph
    <repository>/<name>/<version>/manifest.json       what it is (:class:`Manifest`)
    <repository>/<name>/<version>/checkpoint/         the source checkpoint

- :mod:`modelrepo.layout`: where versions are, and which folder names count as versions.
- :mod:`modelrepo.manifest`: the typed, versioned manifest, read and validated field by field.
- :mod:`modelrepo.signal_rules`: the signal-set rules a manifest names, and their one
  implementation.
"""

from modelrepo.layout import LayoutProblem, VersionDir, scan_versions
from modelrepo.manifest import (
    FORMAT,
    Manifest,
    ManifestError,
    Metrics,
    PoolingSpec,
    Provenance,
    TaskSpec,
    TensorSpec,
    WeightQuality,
    read_manifest,
    write_manifest,
)
from modelrepo.signal_rules import DEFAULT_RULE, NAMED, RuleError, SignalRule

__all__ = [
    "DEFAULT_RULE",
    "FORMAT",
    "NAMED",
    "LayoutProblem",
    "Manifest",
    "ManifestError",
    "Metrics",
    "PoolingSpec",
    "Provenance",
    "RuleError",
    "SignalRule",
    "TaskSpec",
    "TensorSpec",
    "VersionDir",
    "WeightQuality",
    "read_manifest",
    "scan_versions",
    "write_manifest",
]
