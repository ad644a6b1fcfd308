"""The benchmarks' verdicts: a missed target prints MISSED and makes the exit status non-zero.

The quick benchmarks run here on tiny inputs (bench_voc_eval, bench_prune_latency,
bench_pruned_speed, bench_data), through their own `main`; of those that take minutes, the
functions that decide the verdict (search quality, early stopping) run on hand-made runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:  # as when the script runs: its helpers lie beside it
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


targets = _load("targets")


@pytest.mark.parametrize(
    ("value", "op", "bound", "met"),
    [
        (3.2, ">=", 3.0, True),
        (3.0, ">=", 3.0, True),  # the bound itself meets it
        (2.9, ">=", 3.0, False),
        (0.2, "<=", 0.3, True),
        (0.31, "<=", 0.3, False),
        (-1.0, ">=", -1.0, True),
        (math.nan, ">=", 0.0, False),  # a failed measurement is never a met target
        (math.nan, "<=", 1.0, False),
        (math.inf, "<=", 1.0, False),
    ],
)
def test_a_target_is_met_only_on_the_right_side_of_its_bound(
    value: float, op: str, bound: float, met: bool
) -> None:
    assert targets.Target("x", value, op, bound).met is met


def test_check_prints_every_target_and_fails_when_one_is_missed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = targets.Target("loader / train step", 7.5, ">=", 3.0, "x")
    bad = targets.Target("default training time", 11.2, "<=", 10, " min")
    assert targets.check([good]) == 0
    assert capsys.readouterr().out == "target loader / train step: 7.5x (target >= 3x): met\n"
    assert targets.check([good, bad]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "target loader / train step: 7.5x (target >= 3x): met",
        "target default training time: 11.2 min (target <= 10 min): MISSED",
        "missed 1 of 2 targets: default training time",
    ]


def _main(
    name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str]]:
    """Run bench/<name>.py's main with `argv`, as `python bench/<name>.py ...` would: its exit
    status and its printed lines."""
    return _run_main(_load(name), name, argv, monkeypatch, capsys)


def _run_main(
    module: ModuleType,
    name: str,
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, list[str]]:
    monkeypatch.setattr(sys, "argv", [f"bench/{name}.py", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    code = exit_info.value.code
    assert isinstance(code, int), code  # a verdict, not a message
    return code, capsys.readouterr().out.splitlines()


def _targets(lines: list[str]) -> dict[str, str]:
    """Each printed target's name and its verdict (met or MISSED)."""
    found = [
        re.fullmatch(r"target (.+?): .* \(target [<>]= .*\): (met|MISSED)", line) for line in lines
    ]
    return {m[1]: m[2] for m in found if m}


def test_the_fingerprint_benchmark_sees_the_edit_and_keeps_the_key_elsewhere(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _main("bench_fingerprint", ["--scale", "0.01"], monkeypatch, capsys)
    assert lines[0] == "wrote 215 annotations and image stand-ins in " + lines[0].split(" in ")[1]
    verdicts = _targets(lines)
    assert verdicts["keys that differ where they should not"] == "met"
    assert verdicts["edits the key missed"] == "met"
    assert code == (0 if set(verdicts.values()) == {"met"} else 1)


def test_the_driver_benchmark_prints_its_marks_side_by_side_and_judges_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--trials", "24", "--every-event-trials", "12"]
    code, lines = _main("bench_driver", argv, monkeypatch, capsys)
    assert lines[0].startswith("search.sync_every_s default (60 s): 24 trials in ")
    # trials, ms/trial, of it views, MB pushed, KB/trial: the throttled run's marks, the run at
    # every event's, then the slow trials' into an appending storage and into a whole-object one
    rows = [line.split() for line in lines if re.fullmatch(r"(\s+[\d.]+){5}", line)]
    assert [row[0] for row in rows] == ["10", "24", "10", "12", "10", "24", "10", "24"]
    throttled, every_event = rows[0], rows[2]
    assert float(every_event[3]) > 2 * float(throttled[3])  # MB at 10 trials: a copy per event
    assert any(line.startswith("at 10 trials, every event over throttled: ") for line in lines)
    verdicts = _targets(lines)
    assert set(verdicts) == {
        "time per trial at 24 over at 10",
        "SearchViews' time per trial at 24 over at 10",
        "bytes per trial at 24 over at 10, fast",
        "bytes per trial at 24 over at 10, slow",
        "bytes per trial at 24 over at 10, slow, whole",
    }
    assert code == (0 if set(verdicts.values()) == {"met"} else 1)


VOC_EVAL_TINY = ["--images", "40", "--classes", "3", "--dets-per-image", "10", "--inverted", "0.1"]


def test_the_voc_eval_benchmark_passes_when_both_sides_agree(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _main("bench_voc_eval", VOC_EVAL_TINY, monkeypatch, capsys)
    assert "identical: True" in lines[-3]
    assert "target APs that differ from the devkit loop's: 0 (target <= 0): met" in lines
    assert _targets(lines) == {
        "APs that differ from the devkit loop's": "met",
        "vectorised evaluation": "met",  # 400 detections, far below a second
    }
    assert code == 0


def test_the_voc_eval_benchmark_fails_when_the_devkit_loop_disagrees(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("bench_voc_eval")
    loop = bench.reference_voc_eval

    def one_class_off(*args: Any) -> Any:  # the loop's AP of one class, 1e-9 away
        aps = loop(*args)
        aps["voc07"]["class1"] += 1e-9
        return aps

    monkeypatch.setattr(bench, "reference_voc_eval", one_class_off)
    code, lines = _run_main(bench, "bench_voc_eval", VOC_EVAL_TINY, monkeypatch, capsys)
    assert "identical: False" in lines[-4]
    assert "target APs that differ from the devkit loop's: 1 (target <= 0): MISSED" in lines
    assert lines[-1] == "missed 1 of 2 targets: APs that differ from the devkit loop's"
    assert code == 1


def test_the_prune_latency_benchmark_exits_non_zero_when_a_target_is_missed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ratio 0 removes nothing: the parameter target (<= 35% of dense) is missed whatever the timing.
    argv = ["--size", "32", "--ratio", "0.0", "--repeats", "1"]
    code, lines = _main("bench_prune_latency", argv, monkeypatch, capsys)
    assert "params   dense 50,655,389  pruned 50,655,389  ratio 1.000" in lines
    assert "target params pruned / dense: 1 (target <= 0.35): MISSED" in lines
    assert set(_targets(lines)) == {"params pruned / dense", "speedup / FLOPs reduction"}
    assert code == 1


def test_the_pruned_speed_benchmark_judges_the_fraction_it_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--size", "32", "--ratios", "0.5", "--batches", "1", "--repeats", "1"]
    code, lines = _main("bench_pruned_speed", argv, monkeypatch, capsys)
    (row,) = [line.split() for line in lines if line.split()[:2] == ["1", "0.5"]]
    assert row[2] == "0.04"  # GFLOPs of yolov2-voc at 32 x 32, half the filters
    verdicts = _targets(lines)
    assert list(verdicts) == ["speedup / FLOPs reduction at 0.5, batch 1"]
    (line,) = [line for line in lines if line.startswith("target ")]
    judged = float(line.split(": ")[1].split(" ")[0])
    assert judged == pytest.approx(float(row[-1]), abs=0.006)  # the row's fraction, to 2 places
    assert verdicts["speedup / FLOPs reduction at 0.5, batch 1"] == (
        "met" if judged >= 0.8 else "MISSED"
    )
    assert code == (0 if judged >= 0.8 else 1)


def test_the_data_benchmark_measures_the_loader_against_the_train_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    smoke = BENCH.parent / "experiments" / "smoke.yaml"
    argv = ["--config", str(smoke), "--set", f"cache_dir={tmp_path}",
            "--set", f"data.root={tmp_path}/VOCdevkit", "--batches", "2", "--rounds", "1"]  # fmt: skip
    code, lines = _main("bench_data", argv, monkeypatch, capsys)
    assert lines[0].startswith("smoke: yolov2 width 0.125 at 96, batch 8, 0 workers, 16 training")
    load = float(re.findall(r"loader: +(\d+) images/s", "\n".join(lines))[0])
    train = float(re.findall(r"train step: +(\d+) images/s", "\n".join(lines))[0])
    (line,) = [line for line in lines if line.startswith("target ")]
    ratio = float(re.findall(r": ([\d.]+)x \(", line)[0])
    assert ratio == pytest.approx(load / train, rel=0.1)  # printed rates are rounded
    # The verdict is that of the ratio it printed (timed on a shared machine: either way).
    met = ratio >= 3.0
    assert _targets(lines) == {"loader / train step": "met" if met else "MISSED"}
    assert code == (0 if met else 1)


quality = _load("bench_search_quality")


def _run(method: str, seed: int, points: list[tuple[float, float]]) -> object:
    """A run starting from the dense model (map 0.8 at 1 GFLOP), then `points` (map, GFLOPs)."""
    maps, gflops = zip(*[(0.8, 1.0), *points], strict=True)
    return quality.Run(method, seed, maps, gflops, 0.8, 1.0, minutes=1.0)


def test_a_runs_hypervolume_is_over_the_dense_models_box_and_grows_with_its_trials() -> None:
    run = _run("tpe-stage", 0, [(0.7, 0.5), (0.5, 0.25)])
    # (0.5 - 0.25) * 0.5 + (1.0 - 0.5) * 0.7, over the dense box 0.8 * 1.0
    assert run.hypervolume() == pytest.approx(0.475 / 0.8)
    assert run.hypervolume(2) == pytest.approx(0.35 / 0.8)  # the first two trials only
    assert run.hypervolume(1) == 0.0  # the dense model alone dominates nothing inside its box


def test_the_fewest_gflops_within_one_map_point_of_the_dense_model() -> None:
    assert _run("sweep", 0, [(0.7, 0.5)]).fewest_gflops() == 1.0  # only the dense model is close
    close = _run("sweep", 0, [(0.7, 0.3), (0.791, 0.6), (0.789, 0.4)])
    assert close.fewest_gflops() == 0.6  # 0.789 lies more than 1 point below 0.8


def test_methods_are_summarised_over_seeds_against_the_sweep() -> None:
    runs = [
        _run("sweep", 0, [(0.79, 0.8), (0.6, 0.5)]),
        _run("sweep", 1, [(0.795, 0.8), (0.6, 0.5)]),
        _run("tpe-stage", 0, [(0.795, 0.5), (0.6, 0.25)]),
        _run("tpe-stage", 1, [(0.792, 0.4), (0.7, 0.5)]),
    ]
    sweep, tpe = quality.summarise(runs)
    assert (sweep.method, sweep.seeds, tpe.method, tpe.seeds) == ("sweep", 2, "tpe-stage", 2)
    assert sweep.hypervolume_vs_sweep == pytest.approx(1.0)
    hv = [r.hypervolume() for r in runs]
    assert tpe.hypervolume == pytest.approx((hv[2] + hv[3]) / 2)
    assert (tpe.hypervolume_low, tpe.hypervolume_high) == (min(hv[2:]), max(hv[2:]))
    assert tpe.hypervolume_vs_sweep == pytest.approx((hv[2] + hv[3]) / (hv[0] + hv[1]))
    assert tpe.fewest_gflops == pytest.approx(0.45)
    assert tpe.fewer_gflops_vs_sweep == pytest.approx(0.8 / 0.45)
    assert quality.best_searched([sweep, tpe]) == (tpe, tpe)


def test_the_targets_are_judged_against_the_stronger_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The search beats the sweep at the file's lr twice over, but not the sweep at two lrs:
    the targets are missed, and the table against each sweep is printed."""
    runs = [
        _run("sweep", seed, [(0.6, 0.8), (0.3, 0.5)]) for seed in (0, 1)
    ] + [
        _run("sweep-lr", seed, [(0.795, 0.5), (0.7, 0.25)]) for seed in (0, 1)
    ] + [
        _run("sensitivity-layer-lr", seed, [(0.795, 0.45), (0.71, 0.25)]) for seed in (0, 1)
    ]  # fmt: skip
    assert quality.report(runs, tmp_path, warm_first=2) == 1
    out = capsys.readouterr().out
    assert "against sweep: best search by hypervolume sensitivity-layer-lr" in out
    assert "against sweep-lr: best search by hypervolume sensitivity-layer-lr" in out
    assert "the targets against the stronger of: sweep, sweep-lr" in out
    lines = [line for line in out.splitlines() if line.startswith("target ")]
    assert lines[1].startswith(f"target fewer GFLOPs at dense - 1 point, best search vs the "
                               f"stronger sweep: {0.5 / 0.45:.4g}x")  # fmt: skip
    saved = json.loads((tmp_path / "search-quality.json").read_text())
    assert set(saved["against"]) == {"sweep", "sweep-lr"}
    assert (tmp_path / "search-quality.png").stat().st_size > 0


@pytest.mark.parametrize("method", quality.METHODS)
def test_every_methods_experiment_is_a_valid_search_of_the_default_task(
    method: str, tmp_path: Path
) -> None:
    import yaml

    from search.space import build_space
    from yolov2.config import load_config

    source = tmp_path / f"{method}.yaml"
    source.write_text(yaml.safe_dump(quality.experiment(method, 1, trials=9, epochs=2)))
    config = load_config(source)
    space = build_space(config, str(source))  # ratio counts and ranges checked as a run does
    assert (config.name, config.search.num_samples, config.search.seed) == (f"{method}-s1", 9, 1)
    assert (config.finetune.epochs, config.finetune.seed) == (2, 1)
    at_lrs = method.endswith("-lr")
    if at_lrs:  # each cost at two lrs: half as many costs
        assert config.search.known_at == {"finetune.lr": [2e-3, 5e-4]}
        assert [key for key, _ in space.entries] == ["finetune.lr"]
        # the enqueued points fill the budget: the dense model, then each ratio (or, for the
        # sensitivity methods, each warm-start budget) at each of the two lrs
        warm = config.search.warm_start == "sensitivity"
        costs = len(config.search.known_points) - 1 + warm * len(config.search.warm_start_budgets)
        assert 1 + 2 * costs == 9
    else:
        assert not config.search.known_at
    if method.startswith("sensitivity-"):  # the warm start's budgets, one per trial but the
        budgets = config.search.warm_start_budgets  # dense model's: the sweep's costs
        assert len(budgets) == (4 if at_lrs else 8)
        assert budgets == sorted(set(budgets))
        sweep_name = "sweep-lr" if at_lrs else "sweep"
        sweep = quality.experiment(sweep_name, 1, trials=9, epochs=2)["search"]["known_points"]
        for ratio, budget in zip(sweep[1:], budgets, strict=True):
            # a conv's cost scales with (1 - ratio) of its inputs and of its outputs; the image's
            # 3 channels, the head's outputs and widths rounded to 4 filters keep a little more
            assert 0.8 <= budget / (1 - (1 - ratio) ** 2) <= 1.0
        assert config.search.warm_start == "sensitivity"
        assert len(space.ratio_names) == (22 if "layer" in method else 6)
        assert at_lrs or not space.entries
    elif method.startswith("sweep"):  # every trial a uniform ratio at the experiment's finetune
        assert space.ratio_names == ("ratio",)
        assert at_lrs or not space.entries
        assert config.search.known_points[0] == 0.0
        assert len(config.search.known_points) == (5 if at_lrs else 9)
        assert config.search.known_points[-1] == pytest.approx(0.6)
        if at_lrs:  # the dense model once, then each ratio at the two lrs: the budget but one
            first = space.first_points(config)
            assert [(p["ratio"], p.get("finetune.lr")) for p in first[:3]] == [
                (0.0, 2e-3), (0.15, 2e-3), (0.15, 5e-4)
            ]  # fmt: skip
            assert len(first) == 9
    else:
        assert config.search.known_points == [0.0]
        assert config.search.sampler == method.split("-", maxsplit=1)[0]
        assert len(space.ratio_names) == (22 if "layer" in method else 6)
        assert [key for key, _ in space.entries] == [
            "finetune.lr", "finetune_loss.coord_scale", "finetune_loss.object_scale"
        ]  # fmt: skip
        assert config.search.warm_start == ("sensitivity" if "warm" in method else "none")


early_stop = _load("bench_early_stop")


def _timeline(rule: str, seed: int, trials: list[tuple[float, str, float, float]]) -> object:
    """The dense model (map 0.8 at 1 GFLOP, ended at 1 s), then (end s, state, map, GFLOPs)."""
    ends, states, maps, gflops = zip(*[(1.0, "COMPLETE", 0.8, 1.0), *trials], strict=True)
    return early_stop.Timeline(rule, seed, ends, states, maps, gflops, 0.8, 1.0)


def test_a_timelines_hypervolume_counts_only_the_trials_completed_by_then() -> None:
    line = _timeline(
        "front", 0, [(100.0, "COMPLETE", 0.7, 0.5), (150.0, "PRUNED", 0.75, 0.2),
                     (300.0, "COMPLETE", 0.5, 0.25)]
    )  # fmt: skip
    assert line.duration == 300.0
    assert line.hypervolume_at(50.0) == 0.0
    assert line.hypervolume_at(100.0) == pytest.approx(0.35 / 0.8)  # the stopped one never counts
    assert line.hypervolume_at(300.0) == pytest.approx(0.475 / 0.8)
    assert (line.count("COMPLETE"), line.count("PRUNED"), line.count("COMPLETE", 200.0)) == (
        3,
        1,
        2,
    )


def test_rules_are_compared_at_equal_wall_time_up_to_the_shortest_run() -> None:
    slow = _timeline("none", 0, [(400.0, "COMPLETE", 0.7, 0.5), (800.0, "COMPLETE", 0.5, 0.25)])
    quick = _timeline("front", 0, [(300.0, "COMPLETE", 0.7, 0.5), (500.0, "PRUNED", 0.2, 0.3),
                                   (600.0, "COMPLETE", 0.5, 0.25)])  # fmt: skip
    result = early_stop.compare([slow, quick], unit_s=250.0)
    seed = result["seeds"][0]
    assert seed["common_end_s"] == 600.0
    assert seed["marks_s"] == [250.0, 500.0, 600.0]
    assert seed["hypervolume"]["none"] == pytest.approx([0.0, 0.35 / 0.8, 0.35 / 0.8])
    assert seed["hypervolume"]["front"] == pytest.approx([0.0, 0.35 / 0.8, 0.475 / 0.8])
    assert seed["at_end"]["none"]["hypervolume"] == pytest.approx(0.475 / 0.8)  # its own end
    assert seed["at_end"]["front"]["stopped"] == 1
    assert result["mean_at_common_end"] == pytest.approx({"none": 0.35 / 0.8, "front": 0.475 / 0.8})


@pytest.mark.parametrize("rule", early_stop.RULES)
def test_every_rules_experiment_is_a_valid_search_of_the_default_task(
    rule: str, tmp_path: Path
) -> None:
    import yaml

    from search.early_stop import make_scheduler
    from yolov2.config import load_config

    source = tmp_path / f"{rule}.yaml"
    source.write_text(yaml.safe_dump(early_stop.experiment(rule, 1, trials=9, epochs=7, every=2)))
    config = load_config(source)
    assert (config.name, config.search.num_samples, config.finetune.epochs) == (f"{rule}-s1", 9, 7)
    scheduler = make_scheduler(config)
    expected = {"none": "NoneType", "asha": "AsyncHyperBandScheduler", "front": "FrontStopper"}
    assert type(scheduler).__name__ == expected[rule]
    assert config.search.warm_start == "none"  # the default's warm start left out: the sampler's


def test_the_quality_report_writes_its_figures_and_exits_with_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    runs = [
        _run("sweep", 0, [(0.79, 0.8), (0.6, 0.5)]),
        _run("tpe-stage", 0, [(0.795, 0.5), (0.6, 0.25)]),
        _run("tpe-stage-warm", 0, [(0.5, 0.9), (0.4, 0.8)]),
    ]
    assert quality.report(runs, tmp_path, warm_first=2) == 0  # tpe-stage beats the sweep
    written = json.loads((tmp_path / "search-quality.json").read_text())
    assert [s["method"] for s in written["summaries"]] == ["sweep", "tpe-stage", "tpe-stage-warm"]
    assert (tmp_path / "search-quality.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.tmp*"))
    out = capsys.readouterr().out
    assert "warm start, seed 0: hypervolume after 2 trials" in out
    assert quality.report(runs[::2], tmp_path, warm_first=2) == 1  # the warm one alone loses


def test_the_early_stop_report_writes_its_figures_and_exits_with_the_verdict(
    tmp_path: Path,
) -> None:
    lines = [
        _timeline("none", 0, [(400.0, "COMPLETE", 0.7, 0.5), (800.0, "COMPLETE", 0.5, 0.25)]),
        _timeline("asha", 0, [(300.0, "PRUNED", 0.2, 0.3), (700.0, "COMPLETE", 0.7, 0.5)]),
        _timeline("front", 0, [(300.0, "COMPLETE", 0.7, 0.5), (600.0, "COMPLETE", 0.5, 0.25)]),
    ]
    assert early_stop.report(lines, 300.0, tmp_path) == 0
    assert (tmp_path / "early-stop.png").read_bytes()[:4] == b"\x89PNG"
    assert early_stop.report([lines[1], lines[0], lines[2]][:2], 300.0, tmp_path) == 1
