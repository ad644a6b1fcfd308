"""YOLOv2 as a plain PyTorch library: model, darknet interop, VOC data and metric, pruning.

Never imports ray or optuna: a pruned checkpoint reloads anywhere with `yolov2.load_checkpoint`.
"""

from yolov2.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
from yolov2.darknet import load_darknet, save_darknet
from yolov2.errors import InputError, TrainingDivergedError
from yolov2.model import Architecture, YOLOv2, build_model, yolov2_tiny_voc, yolov2_voc

__all__ = [
    "Architecture",
    "InputError",
    "TrainingDivergedError",
    "YOLOv2",
    "build_model",
    "checkpoint_metadata",
    "load_checkpoint",
    "load_darknet",
    "save_checkpoint",
    "save_darknet",
    "yolov2_tiny_voc",
    "yolov2_voc",
]
