"""Tasks: one registered object per kind of problem, consulted by every stage.

A task owns the head on named backbone feature maps, the loss and metrics, the label
format and the augmentations that move labels with the image, the numpy post-processing
(mobilecv.postprocess, shared with the on-device script), the calibration data and input
range, the metric by which the converter compares float and converted outputs, and which
test-time techniques apply. A new task is one file in this package; the stages do not grow
``if task == ...``.
"""

from mobilecv.tasks.base import Task, get_task, list_tasks, register_task

__all__ = ["Task", "get_task", "list_tasks", "register_task"]
