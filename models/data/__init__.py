"""Synthetic data for the noise-robustness benchmarks."""

from models.data import knn_centroid

__all__ = ["knn_centroid"]
