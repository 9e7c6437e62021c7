"""Export trained pooling models to ONNX, into a versioned, Triton-style model repository.

python -m export RUN_DIR --name NAME --version V --repository model_repository
python -m export.verify model_repository
"""

from export.onnx_export import INPUT_NAMES, OUTPUT_NAMES, export_onnx
from export.repository import RepositoryError, find_versions

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "RepositoryError", "export_onnx", "find_versions"]
