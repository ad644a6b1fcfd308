"""Checkpoints: one .safetensors file holding the weights, the architecture and the provenance.

No pickle: the architecture (every layer's width) travels as JSON in the safetensors metadata, so a
pruned network is rebuilt before its weights load, in any Python, without the experiment. Layers that
weight pruning made sparse are stored as their non-zero values plus a bit mask, so the file size is the
size a user really ships.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from yolov2.errors import InputError
from yolov2.files import atomic_path
from yolov2.model import Architecture, YOLOv2, build_model

FORMAT = "prune-search/yolov2"
FORMAT_VERSION = 1
_KEY = "prune_search"
_VALUES, _BITS = "::values", "::bits"
# Sparse encoding costs 4 bytes per kept value plus 1/8 byte per element: it pays below this density.
_MAX_SPARSE_DENSITY = 0.95


def save_checkpoint(model: YOLOv2, path: str | os.PathLike[str], **meta: Any) -> Path:
    """Write `model` to `path` atomically; `meta` (JSON-serialisable) is stored with the provenance."""
    tensors: dict[str, Tensor] = {}
    sparse: dict[str, list[int]] = {}
    for name, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        if _worth_sparse(name, tensor):
            mask = tensor != 0
            tensors[name + _VALUES] = tensor[mask].contiguous()
            packed = np.packbits(mask.flatten().numpy())
            tensors[name + _BITS] = torch.from_numpy(packed)
            sparse[name] = list(tensor.shape)
        else:
            tensors[name] = tensor
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.arch.to_dict(),
        "sparse": sparse,
        "provenance": provenance(),
        "meta": meta,
    }
    target = Path(path)
    with atomic_path(target) as temporary:
        save_file(tensors, str(temporary), metadata={_KEY: json.dumps(header, default=str)})
    return target


def _worth_sparse(name: str, tensor: Tensor) -> bool:
    if not name.endswith("conv.weight") or not tensor.is_floating_point() or tensor.numel() < 1024:
        return False
    return float((tensor != 0).float().mean()) < _MAX_SPARSE_DENSITY


def checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a checkpoint: architecture, provenance and the meta it was saved with."""
    with _open(path) as handle:
        return _header(path, handle.metadata())


def checkpoint_letterbox(path: str | os.PathLike[str]) -> bool:
    """Whether the model of a checkpoint takes letterboxed inputs: its recorded experiment's
    `data.letterbox`, which its training and evaluation used; False when it records none (darknet's
    YOLOv2 resizes, so an imported model does not)."""
    config = checkpoint_metadata(path)["meta"].get("config") or {}
    return bool(config.get("data", {}).get("letterbox", False))


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> YOLOv2:
    """Rebuild the (possibly pruned) network stored at `path`, in eval mode."""
    with _open(path) as handle:
        header = _header(path, handle.metadata())
        try:
            arch = Architecture.from_dict(header["architecture"])
        except InputError as error:
            raise InputError(f"{path}: {error}") from None
        state = _dense_state(path, handle, header["sparse"])
    model = build_model(arch)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise InputError(f"{path}: tensor {name!r} is missing")
        if state[name].shape != tensor.shape:
            raise InputError(
                f"{path}: tensor {name!r} has shape {list(state[name].shape)}, "
                f"the architecture needs {list(tensor.shape)}"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise InputError(f"{path}: unexpected tensors {unexpected[:3]}")
    model.load_state_dict(state)
    return model.to(device).eval()


def _dense_state(
    path: str | os.PathLike[str], handle: Any, sparse: Mapping[str, list[int]]
) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    try:
        for key in handle.keys():  # noqa: SIM118  (safe_open has no __iter__)
            if key.endswith(_BITS):
                continue
            if key.endswith(_VALUES):
                name = key.removesuffix(_VALUES)
                state[name] = _unpack(
                    path,
                    name,
                    handle.get_tensor(key),
                    handle.get_tensor(name + _BITS),
                    sparse[name],
                )
            else:
                state[key] = handle.get_tensor(key)
    except (SafetensorError, KeyError, RuntimeError) as error:
        raise InputError(f"{path}: corrupt checkpoint ({error})") from None
    return state


def _unpack(
    path: str | os.PathLike[str], name: str, values: Tensor, bits: Tensor, shape: list[int]
) -> Tensor:
    numel = int(np.prod(shape))
    mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool))
    if int(mask.sum()) != values.numel():
        raise InputError(
            f"{path}: sparse tensor {name!r} has {values.numel()} values for {int(mask.sum())} set bits"
        )
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[mask] = values
    return dense.view(shape)


@contextlib.contextmanager
def _open(path: str | os.PathLike[str]) -> Iterator[Any]:
    """safe_open with our errors: a missing, truncated or foreign file is one clear line."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such checkpoint file")
    try:
        handle = safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{file}: not a readable .safetensors checkpoint ({error})") from None
    with handle as opened:
        yield opened


def _header(path: str | os.PathLike[str], raw: Mapping[str, str] | None) -> dict[str, Any]:
    if not raw or _KEY not in raw:
        raise InputError(f"{path}: a safetensors file, but not a prune-search checkpoint")
    try:
        header: dict[str, Any] = json.loads(raw[_KEY])
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: checkpoint header is not valid JSON ({error})") from None
    if header.get("format") != FORMAT:
        raise InputError(f"{path}: not a prune-search checkpoint (format {header.get('format')!r})")
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(
            f"{path}: written by a newer prune-search (format {header['format_version']})"
        )
    return header


@functools.cache
def provenance() -> dict[str, str]:
    """Package versions and the git revision of this checkout, recorded in every checkpoint."""
    versions = {}
    for package in ("prune-search", "torch", "torchvision", "safetensors"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["python"] = platform.python_version()
    versions["git_revision"] = _git_revision()
    return versions


_PACKAGE = Path(__file__).resolve().parent


def _git_revision(package: Path = _PACKAGE) -> str:
    """HEAD of the checkout `package` lives in; "unknown" when it is not in its own checkout.

    A copy installed into site-packages may lie inside some other repository (a virtual
    environment in a project folder): that repository's HEAD would be a wrong answer, so the
    checkout counts only when its top level is the folder that holds `package`.
    """
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2:
        return "unknown"
    top, revision = lines
    return revision if Path(top).resolve() == package.parent.resolve() else "unknown"
