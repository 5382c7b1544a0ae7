"""Datasets (packaged, download-free) and training-time augmentations."""

from mobilecv.data.datasets import ArrayData, DatasetName, Split, load, load_arrays, to_dataset

__all__ = ["ArrayData", "DatasetName", "Split", "load", "load_arrays", "to_dataset"]
