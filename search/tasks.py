"""Work the driver hands to Ray tasks with a trial's resources: a node that can hold a trial can
hold it, on a laptop's loopback Ray and on a cluster alike, and several run at once as trials do.

The dense stage, the warm start's sensitivity table, the screen's candidates, the test maps of the
front and refine's longer finetunes each run this way, never on the driver, which on a cluster may
have neither the data nor a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from yolov2.config import SearchConfig
from yolov2.errors import InputError

Item = TypeVar("Item")


def trial_task(search: SearchConfig, function: Callable[..., Any]) -> Any:
    """`function` as a Ray remote function that asks for a trial's CPUs and GPUs."""
    import ray

    return ray.remote(num_cpus=search.cpus_per_trial, num_gpus=search.gpus_per_trial)(function)


def as_ready(
    items: Iterable[Item], submit: Callable[[Item], Any], limit: int
) -> Iterator[tuple[Item, Any]]:
    """(item, its task's result) as each task ends, at most `limit` tasks at once, `submit`
    starting one item's task. A user's mistake a task raised is raised here as itself."""
    import ray

    waiting = list(items)
    running: dict[Any, Item] = {}
    while waiting or running:
        while waiting and len(running) < limit:
            item = waiting.pop(0)
            running[submit(item)] = item
        (ready,), _ = ray.wait(list(running), num_returns=1)
        yield running.pop(ready), result(ready)


def result(ref: Any) -> Any:
    """A task's result; an InputError it raised (a user's mistake: one line) is raised as itself."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as error:
        if isinstance(error.cause, InputError):
            raise error.cause from None
        raise
