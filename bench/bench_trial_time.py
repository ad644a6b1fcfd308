"""Where one default trial's time goes: pruning, data loading, forward/backward, evaluation,
checkpointing and measuring, each timed apart on the trial's own resources (1 CPU: 1 torch thread,
loading in the training process), for the default experiment's uniform 0.3 point.

A trial is: prune, `finetune.epochs` epochs (each: load + forward/backward, then a checkpoint of
the training state, written and copied for Ray), the map right after pruning and after the
finetune (two evaluations), and the costs measured twice (for the per-epoch reports and the final
one). The shares below are of that sum; Ray's own part (reports, scheduling) is the search's
orchestration overhead, measured by bench/bench_search.py. Needs the default dense stage in the
cache (`make run` or bench/bench_search.py makes it; trained here otherwise, about 20 minutes).

    python bench/bench_trial_time.py [--ratio 0.3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

DEFAULT = Path(__file__).resolve().parents[1] / "experiments" / "default.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--set", action="append", default=[], help="override, e.g. data.workers=1")
    args = parser.parse_args()

    from yolov2.config import load_config
    from yolov2.engine import (
        TrainState,
        load_splits,
        lr_factor,
        make_optimizer,
        resolve_device,
        save_state,
        train_loader,
        train_one_epoch,
    )
    from yolov2.pipeline import (
        CHECKPOINT_FILE,
        cached_dense,
        evaluate_model,
        measure,
        prune,
        save_pruned,
    )

    torch.set_num_threads(1)
    config = load_config(DEFAULT, [*args.set, "data.workers=0", f"prune.ratio={args.ratio}"])
    splits = load_splits(config.data)
    dense = cached_dense(config, splits)
    seconds: dict[str, float] = {}

    def timed(name: str, function, *arguments, **keywords):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        value = function(*arguments, **keywords)
        seconds[name] = time.perf_counter() - start
        return value

    model, masks = timed("prune", prune, dense.model, config.prune, dense.model.arch)
    loader = train_loader(splits.train, config.data, config.finetune)
    loader.batch_sampler.set_epoch(0)  # type: ignore[union-attr]
    timed("data (one epoch)", lambda: sum(len(batch[0]) for batch in loader))
    device = resolve_device(config.train.device)
    optimizer = make_optimizer(model, config.finetune)
    steps = config.finetune.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.finetune, steps))
    state = TrainState(seen=dense.seen)
    loader.batch_sampler.set_epoch(1)  # type: ignore[union-attr]
    timed(
        "epoch (data + forward/backward)",
        train_one_epoch,
        model,
        loader,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_config=config.finetune_loss or config.loss,
        device=device,
        state=state,
        train=config.finetune,
        masks=masks,
        desc="epoch",
    )
    timed("evaluation", evaluate_model, model, config, splits)
    with tempfile.TemporaryDirectory() as scratch:
        state_path = Path(scratch) / "train_state.pt"

        def write_and_copy() -> None:  # what a trial does after each epoch, Ray's upload apart
            save_state(state_path, model, optimizer, scheduler, state, settings={})
            shutil.copy2(state_path, Path(scratch) / "copy.pt")

        timed("checkpoint (write + copy)", write_and_copy)
        checkpoint = save_pruned(model, Path(scratch) / CHECKPOINT_FILE, config, splits.classes)
        timed("measure (costs, latency)", measure, model, checkpoint, config, dense.model)

    epochs = config.finetune.epochs
    data, epoch = seconds["data (one epoch)"], seconds["epoch (data + forward/backward)"]
    parts = {
        "prune": seconds["prune"],
        "data loading": epochs * data,
        "forward/backward": epochs * (epoch - data),
        "evaluation (2)": 2 * seconds["evaluation"],
        "checkpoints": epochs * seconds["checkpoint (write + copy)"],
        "measuring (2)": 2 * seconds["measure (costs, latency)"],
    }
    total = sum(parts.values())
    print(f"\none default trial, uniform {args.ratio}, {epochs} finetune epochs, 1 thread:")
    for name, value in sorted(parts.items(), key=lambda item: -item[1]):
        print(f"  {name:18s} {value:7.1f} s  {value / total:6.1%}")
    print(f"  {'total':18s} {total:7.1f} s")
    print(
        f"  (one epoch: data {data:.1f} s of {epoch:.1f} s; one evaluation {seconds['evaluation']:.1f} s)"
    )
    top = max(parts, key=lambda name: parts[name])
    print(f"the next bottleneck: {top}")
    from targets import Target, check  # bench/targets.py, beside this script

    # Checkpointing every epoch (for failover) must stay a small part of a trial.
    share = 100 * parts["checkpoints"] / total
    raise SystemExit(check([Target("checkpoints' share of a trial", share, "<=", 5, "%")]))


if __name__ == "__main__":
    main()
