"""Fixtures shared by tests/yolov2 and tests/search: the VOCdevkit tree writer lives in tests/yolov2.

The suite runs torch on one thread. It runs on two cores that other work shares, and torch's
intra-op threads spin while they wait for a busy core: measured there, the pipeline tests took 7x
the CPU time with two threads that they take with one.
"""

import torch

from tests.yolov2.conftest import write_voc_tree_fixture

torch.set_num_threads(1)

__all__ = ["write_voc_tree_fixture"]
