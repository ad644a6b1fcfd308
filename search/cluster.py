"""The Ray cluster a search runs on: reaching it, and whether it can hold a trial now, once its
autoscaler has added a node, or never.

Reaching it. Ray 2.60 turns token authentication on for a head that `ray start` started with a
token (`cluster.yaml` does), and then refuses a driver whose environment does not say
`RAY_AUTH_MODE=token`, even with the token in `~/.ray/auth_token`. So a driver that finds a token
where Ray looks for one (`RAY_AUTH_TOKEN`, the file `RAY_AUTH_TOKEN_PATH` names, `~/.ray/auth_token`)
turns token mode on for itself, as `ray start` does; authentication is never turned off. A refusal
is one line that says where the token was looked for.

Holding a trial. Without an autoscaler, a trial no live node can hold is refused at once. With one
(the head of `cluster.yaml` offers no CPUs and its GPU workers start from zero, so a fresh cluster
has no node that fits), a trial is refused only when no node type the autoscaler can launch could
hold it: the types are read from the autoscaler's config on the head (where Ray's launcher puts it,
`~/ray_bootstrap_config.yaml`, and where `ray exec` runs the driver). Otherwise the search asks the
autoscaler for one such node, says once a minute what it waits for, and gives up in one line after
`search.placement_timeout` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from yolov2.config import SearchConfig
from yolov2.errors import InputError

log = logging.getLogger("prune-search")

AUTH_MODE = "RAY_AUTH_MODE"
AUTOSCALING_STATUS = "__autoscaling_status"  # the autoscaler's report in Ray's KV
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # the autoscaler's config, as the launcher puts it
WAIT_LOG_S = 60.0


def token_source() -> str | None:
    """Where Ray reads this driver's token from, in Ray's own order; None when it finds none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        return named if Path(named).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def connect(address: str, **options: Any) -> None:
    """`ray.init` at `address`, in token mode when a token is found; one line when refused."""
    import ray

    source = token_source()
    if source is not None and AUTH_MODE not in os.environ:
        _token_mode()
    try:
        ray.init(address=address, **options)
    except ConnectionError:
        if source is None:
            raise InputError(
                f"--address {address}: no Ray cluster let this driver in: none runs there, or it "
                "requires a token and none was found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
                "~/.ray/auth_token: copy the head's ~/.ray/auth_token, which `ray get-auth-token` "
                "prints on the head)"
            ) from None
        raise InputError(
            f"--address {address}: no Ray cluster let this driver in: none runs there, or it "
            f"refused the token from {source}"
        ) from None


def _token_mode() -> None:
    """RAY_AUTH_MODE=token for this process and the ones it starts, and Ray's cached config told
    (Ray's own `ray start` does the same when it finds a token)."""
    os.environ[AUTH_MODE] = "token"
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")


def check_resources(search: SearchConfig) -> None:
    """Return once a live node can hold a trial; refuse one no node (nor any node type of the
    autoscaler) can hold in one line, instead of a search that waits forever."""
    import ray

    need = {"CPU": search.cpus_per_trial, "GPU": search.gpus_per_trial}
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(_holds(node, need) for node in nodes):
        return
    types = launchable_node_types()
    if types is None:
        raise InputError(_refusal(need, nodes, "node of this Ray cluster"))
    if types and not any(_holds(t["resources"], need) for t in types.values()):
        shown = [t["resources"] for t in types.values()]
        raise InputError(_refusal(need, shown, "node type this Ray cluster's autoscaler launches"))
    wait_for_node(need, types, search.placement_timeout)


def _holds(resources: dict[str, float], need: dict[str, float]) -> bool:
    return all(resources.get(name, 0.0) >= amount for name, amount in need.items() if amount)


def _refusal(need: dict[str, float], offers: list[dict[str, float]], of: str) -> str:
    """Why none of `offers` (`of`: "node of this Ray cluster", or "node type of its autoscaler")
    holds a trial that needs `need`."""
    most = {name: max((o.get(name, 0.0) for o in offers), default=0.0) for name in need}
    if need["CPU"] > most["CPU"]:
        return f"search.cpus_per_trial is {need['CPU']:g}, but the largest {of} has {most['CPU']:g} CPUs"
    if most["GPU"] == 0:
        return f"search.gpus_per_trial is {need['GPU']:g}, but no {of} has a GPU"
    return (
        f"search.gpus_per_trial is {need['GPU']:g}, but the largest {of} has {most['GPU']:g} GPUs"
    )


def launchable_node_types() -> dict[str, dict[str, Any]] | None:
    """The node types the cluster's autoscaler can launch (name -> resources, max_workers); None
    without an autoscaler; empty when it runs but its config is not on this machine."""
    from ray.experimental.internal_kv import _internal_kv_get

    # A local Ray runs the autoscaler's monitor too, but with nothing to launch it reports nothing.
    status = _internal_kv_get(AUTOSCALING_STATUS)
    if status is None or not json.loads(status).get("autoscaler_report"):
        return None
    path = Path(BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
        types = config["available_node_types"]
        return {
            name: {"resources": dict(t.get("resources", {})), "max_workers": t["max_workers"]}
            for name, t in types.items()
            if t.get("max_workers", 0) > 0
        }
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{path}: not an autoscaler config Ray wrote ({error})") from None


def wait_for_node(need: dict[str, float], types: dict[str, dict[str, Any]], timeout: float) -> None:
    """Ask the autoscaler for one node that holds `need` and wait until one is up, saying once a
    minute what it waits for; the request is withdrawn either way (the trials' own requests keep
    their nodes), so that no node stays up for a search that has ended."""
    import ray
    from ray.autoscaler.sdk import request_resources

    bundle = {name: amount for name, amount in need.items() if amount}
    wanted = f"{need['CPU']:g} CPUs" + (f" and {need['GPU']:g} GPUs" if need["GPU"] else "")
    most = sum(t["max_workers"] for t in types.values()) or None
    request_resources(bundles=[bundle])
    start, said = time.monotonic(), -WAIT_LOG_S
    try:
        while True:
            nodes = [node for node in ray.nodes() if node.get("Alive")]
            if any(_holds(node["Resources"], need) for node in nodes):
                return
            waited = time.monotonic() - start
            if waited > timeout:
                raise InputError(
                    f"no node with {wanted} came up in {timeout:g} s "
                    "(search.placement_timeout): see `ray status` on the head"
                )
            if waited - said >= WAIT_LOG_S:
                workers = len(nodes) - 1
                of = f" of {most}" if most else ""
                log.info("waiting for a node with %s: %d%s workers up, %.0f s so far",
                         wanted, workers, of, waited)  # fmt: skip
                said = waited
            time.sleep(1.0)
    finally:
        request_resources(bundles=[])
