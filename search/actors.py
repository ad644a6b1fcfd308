"""The search's bookkeeping actors live on the driver's node.

A named actor with no CPUs can be placed on any node, and a worker node may leave mid-search (the
autoscaler scales it down, a spot instance is reclaimed): an actor there dies with it, and every
trial that asks it anything fails. The search ends with its driver anyway, so its actors (the
dense stage's claims, the latency registry) are pinned to the node the driver runs on.
"""

from __future__ import annotations

from typing import Any


def on_driver_node(cls: type, name: str, *args: Any) -> Any:
    """The running actor `name`, or a new one of `cls(*args)` on this (the driver's) node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor: Any = ray.remote(num_cpus=0)(cls)
    return actor.options(name=name, get_if_exists=True, scheduling_strategy=here).remote(*args)
