"""Data: the synthetic noise-robustness benchmarks, and the format for your own token sets.

``write_dataset`` / ``read_dataset`` (:mod:`models.data.sets`): a ``.npz`` file or a folder of
``.npy`` files holding embeddings, masks, a target per set and optional signal masks and split.
"""

from models.data import knn_centroid
from models.data.files import ragged, read_dataset, write_dataset
from models.data.sets import (
    Batch,
    DataFormatError,
    TokenSets,
    seeded_split,
)

__all__ = [
    "Batch",
    "DataFormatError",
    "TokenSets",
    "knn_centroid",
    "ragged",
    "read_dataset",
    "seeded_split",
    "write_dataset",
]
