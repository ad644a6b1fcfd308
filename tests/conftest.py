"""Fixtures shared by tests/yolov2 and tests/search: the VOCdevkit tree writer lives in tests/yolov2."""

from tests.yolov2.conftest import write_voc_tree_fixture

__all__ = ["write_voc_tree_fixture"]
