"""The device a trial (or a task with a trial's resources) trains on: the one Ray gave it.

Ray 2.60 does not hide a node's GPUs from a worker that got none: with zero GPU ids it leaves
`CUDA_VISIBLE_DEVICES` as it was, so torch there sees every GPU of the node, and `train.device:
auto` would put a trial that asked for no GPU on GPU 0, which Ray does not account for (the
trials it placed there would share it unseen). So a worker's device comes from `ray.get_gpu_ids()`,
never from `torch.cuda.is_available()` alone: no GPU ids, the CPU; GPU ids, CUDA (Ray has made
exactly those visible, the first of them `cuda`). The driver, which makes a local search's dense
stage before any trial, takes the device its trials will get, so that the dense cache key (which
holds the precision a device trains in) is the trials' own.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Sequence

import torch

from yolov2.config import ExperimentConfig, SearchConfig
from yolov2.errors import InputError

log = logging.getLogger("prune-search")


def device_for(gpu_ids: Sequence[str], cuda_available: bool) -> str:
    """The device of a worker that Ray gave `gpu_ids`. GPU ids on a node where torch has no CUDA
    (a CPU build of torch, or GPUs faked for a test) train on the CPU, said once in the log;
    `device` and `gpu_ids` in the trials table then show the mismatch."""
    if not gpu_ids:
        return "cpu"
    if not cuda_available:
        log.warning("Ray gave GPU %s, but torch here has no CUDA: training on the CPU",
                    ",".join(gpu_ids))  # fmt: skip
        return "cpu"
    return "cuda"


def planned_device(search: SearchConfig) -> str:
    """The device the trials of `search` get, as the driver sees it before they start."""
    return "cuda" if search.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"


def worker_gpu_ids() -> list[str] | None:
    """The GPU ids Ray gave this process, when it is a Ray worker (a trial or a task); None in
    the driver, or without Ray."""
    if "ray" not in sys.modules:
        return None
    import ray
    from ray._private.worker import WORKER_MODE, global_worker

    if not ray.is_initialized() or global_worker.mode != WORKER_MODE:
        return None
    return [str(gpu) for gpu in ray.get_gpu_ids()]


def ray_placement() -> dict[str, str]:
    """Where this Ray worker (a trial, or a task with a trial's resources) really runs: `node`
    (host and Ray node id, unique on a cluster even where hosts share a name), and the GPU ids
    Ray gave it (`gpu_ids`, empty on CPUs)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    return {"node": f"{socket.gethostname()}:{node_id[:8]}", "gpu_ids": gpus}


def on_ray_device(config: ExperimentConfig) -> ExperimentConfig:
    """`config` with its dense training and finetune on the device Ray gave this worker (in the
    driver: the one its trials will get). The device is a run-time knob: the config's digest stays;
    the dense cache key follows the precision the device trains in."""
    gpu_ids = worker_gpu_ids()
    if gpu_ids is None:
        device = planned_device(config.search)
    else:
        device = device_for(gpu_ids, torch.cuda.is_available())
    train = config.train.model_copy(update={"device": device})
    finetune = config.finetune.model_copy(update={"device": device})
    return config.model_copy(update={"train": train, "finetune": finetune})


def check_device(config: ExperimentConfig, source: str) -> None:
    """A `train.device` the trials' resources contradict is one clear error (naming `source`, the
    experiment file) before the search starts."""
    gpus = config.search.gpus_per_trial
    for section in ("train", "finetune"):
        device = getattr(config, section).device
        if device == "cuda" and gpus == 0:
            raise InputError(
                f"{source}: {section}.device is cuda, but search.gpus_per_trial is 0: Ray gives the trials "
                "no GPU (set search.gpus_per_trial, or the device to auto)"
            )
        if device == "cpu" and gpus > 0:
            raise InputError(
                f"{source}: {section}.device is cpu, but search.gpus_per_trial is {gpus:g}: each trial "
                "would hold a GPU it never uses (set search.gpus_per_trial to 0, or the device "
                "to auto)"
            )
