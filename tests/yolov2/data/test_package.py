"""`yolov2.data` is one package of five modules, and still exports every public name of each."""

from __future__ import annotations

import importlib

import pytest

import yolov2.data

MODULES = ("voc", "dataset", "transforms", "synthetic", "fingerprint")


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_is_exported_from_the_package(module: str) -> None:
    submodule = importlib.import_module(f"yolov2.data.{module}")
    public = {
        name
        for name, value in vars(submodule).items()
        if not name.startswith("_")
        and getattr(value, "__module__", submodule.__name__) == submodule.__name__
        and not isinstance(value, type(importlib))
    }
    assert public <= set(yolov2.data.__all__)
    for name in public:
        assert getattr(yolov2.data, name) is getattr(submodule, name)


def test_each_module_opens_with_a_one_line_summary() -> None:
    for module in (yolov2.data, *(importlib.import_module(f"yolov2.data.{m}") for m in MODULES)):
        assert module.__doc__
        assert module.__doc__.split("\n")[0].endswith(".")
