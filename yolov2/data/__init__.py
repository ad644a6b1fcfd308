"""VOC data: the VOCdevkit reader, the detection dataset, darknet's augmentation, a synthetic VOC set.

One module per job: `voc` reads VOCdevkit trees, `dataset` serves their images and targets,
`transforms` augments for training and resizes for evaluation, `synthetic` writes a VOC-format set,
`fingerprint` hashes what a tree holds (the dense cache's key of real data).
"""

from yolov2.data.dataset import TargetBatch, VOCDetection, collate_detections
from yolov2.data.fingerprint import FINGERPRINT_CACHE, voc_fingerprint
from yolov2.data.synthetic import (
    GENERATOR_VERSION,
    MARKER,
    SYNTHETIC_CLASSES,
    SyntheticObject,
    SyntheticSpec,
    draw_synthetic_image,
    make_synthetic_voc,
)
from yolov2.data.transforms import (
    DarknetAugment,
    DetectionTransform,
    EvalTransform,
    Target,
    crop_replicate,
    distort_hsv,
    letterbox_padding,
    letterbox_size,
    sample_seed,
    to_float,
)
from yolov2.data.voc import VOC_CLASSES, Annotation, VOCObjects, load_image, parse_voc_xml, read_voc

__all__ = [
    "FINGERPRINT_CACHE",
    "GENERATOR_VERSION",
    "MARKER",
    "SYNTHETIC_CLASSES",
    "VOC_CLASSES",
    "Annotation",
    "DarknetAugment",
    "DetectionTransform",
    "EvalTransform",
    "SyntheticObject",
    "SyntheticSpec",
    "Target",
    "TargetBatch",
    "VOCDetection",
    "VOCObjects",
    "collate_detections",
    "crop_replicate",
    "distort_hsv",
    "draw_synthetic_image",
    "letterbox_padding",
    "letterbox_size",
    "load_image",
    "make_synthetic_voc",
    "parse_voc_xml",
    "read_voc",
    "sample_seed",
    "to_float",
    "voc_fingerprint",
]
