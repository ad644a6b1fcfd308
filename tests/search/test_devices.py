"""A trial's device is the one Ray gave it: the CPU without GPU ids even where torch sees GPUs,
CUDA with them; decided in real Ray workers on fake GPU resources, and refused before a search when
the experiment's device contradicts the trials' resources."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from search.devices import check_device, device_for, on_ray_device, worker_gpu_ids
from tests.search.conftest import SMOKE
from yolov2.config import load_config
from yolov2.errors import InputError


@pytest.mark.parametrize(
    ("gpu_ids", "cuda_available", "device"),
    [
        ([], True, "cpu"),  # a node with GPUs, a trial that asked for none
        ([], False, "cpu"),
        (["0"], True, "cuda"),
        (["1", "2"], True, "cuda"),  # Ray made exactly these visible: cuda is the first
        (["0"], False, "cpu"),  # fake GPUs, or a CPU build of torch: said in the log
    ],
)
def test_the_device_follows_the_gpu_ids_ray_gave(
    gpu_ids: list[str], cuda_available: bool, device: str
) -> None:
    assert device_for(gpu_ids, cuda_available) == device


def _decided(experiment: dict[str, Any]) -> tuple[list[str] | None, str, str]:
    from yolov2.config import ExperimentConfig

    config = on_ray_device(ExperimentConfig.model_validate(experiment))
    return worker_gpu_ids(), config.train.device, config.finetune.device


@pytest.fixture(scope="module")
def ray_with_a_gpu() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, object_store_memory=256 * 2**20,
             include_dashboard=False)  # fmt: skip
    yield
    ray.shutdown()


def test_a_worker_without_gpu_ids_trains_on_the_cpu_and_one_with_them_on_its_gpu(
    ray_with_a_gpu: None,
) -> None:
    import ray

    experiment = load_config(SMOKE).model_dump(mode="json")
    without = ray.remote(num_cpus=1, num_gpus=0)(_decided)
    with_gpu = ray.remote(num_cpus=1, num_gpus=1)(_decided)
    assert ray.get(without.remote(experiment)) == ([], "cpu", "cpu")
    gpu_ids, train, finetune = ray.get(with_gpu.remote(experiment))
    assert gpu_ids == ["0"]
    # torch here has no CUDA (the GPU is faked): the CPU, said in the log; on a GPU node, cuda
    assert (train, finetune) == ("cpu", "cpu")
    assert worker_gpu_ids() is None  # the driver is not a worker: it plans by gpus_per_trial


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (["train.device=cuda"], "train.device is cuda, but search.gpus_per_trial is 0"),
        (["finetune.device=cuda"], "finetune.device is cuda, but search.gpus_per_trial is 0"),
        (["search.gpus_per_trial=1", "train.device=cpu"],
         "train.device is cpu, but search.gpus_per_trial is 1: each trial would hold a GPU"),
    ],
)  # fmt: skip
def test_a_device_the_trials_resources_contradict_is_one_line(
    overrides: list[str], problem: str
) -> None:
    with pytest.raises(InputError) as caught:
        check_device(load_config(SMOKE, overrides), str(SMOKE))
    assert str(caught.value).startswith(f"{SMOKE}: {problem}")


def test_auto_and_resources_that_agree_pass() -> None:
    check_device(load_config(SMOKE), str(SMOKE))
    check_device(load_config(SMOKE, ["search.gpus_per_trial=0.5"]), str(SMOKE))
