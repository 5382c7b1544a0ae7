"""Datasets (packaged, download-free), real assets, labelled scenes and augmentations."""

from mobilecv.data.assets import (
    AprilTagPhoto,
    Background,
    SolvayPhoto,
    apriltag_photo,
    opencv_digits,
    solvay_faces,
    stardist_nuclei,
)
from mobilecv.data.datasets import ArrayData, DatasetName, Split, load, load_arrays, to_dataset
from mobilecv.data.scenes import (
    ObjectSource,
    SceneConfig,
    SceneSet,
    draw_scenes,
    generate,
    to_coco,
    write_coco,
)

__all__ = [
    "AprilTagPhoto",
    "ArrayData",
    "Background",
    "DatasetName",
    "ObjectSource",
    "SceneConfig",
    "SceneSet",
    "SolvayPhoto",
    "Split",
    "apriltag_photo",
    "draw_scenes",
    "generate",
    "load",
    "load_arrays",
    "opencv_digits",
    "solvay_faces",
    "stardist_nuclei",
    "to_coco",
    "to_dataset",
    "write_coco",
]
