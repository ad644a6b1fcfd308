"""The benchmarks' verdicts: a missed target prints MISSED and makes the exit status non-zero.

The quick benchmarks run here on tiny inputs (bench_voc_eval, bench_prune_latency,
bench_pruned_speed, bench_data, bench_latency_noise), through their own `main`; of those that
take minutes, the functions that decide the verdict (search quality, early stopping) run on
hand-made runs.
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


def test_the_latency_noise_benchmark_times_every_way_and_the_idle_floor_and_judges_the_search(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--measurements", "2", "--rounds", "1"]
    code, lines = _main("bench_latency_noise", argv, monkeypatch, capsys)
    rows = {
        line[:32].rstrip().split(":")[0]: line.split()
        for line in lines
        if line[:32].rstrip().endswith(" thr")
    }  # each way's row: its name, median, min, max, (max-min)/median, IQR/median
    assert list(rows) == ["search", "same slot", "lowest of 20 x 5, 1 thr",
                          "lowest of 100 x 1, 1 thr", "old", "idle"]  # fmt: skip
    spreads = {way: float(row[-1].rstrip("%")) for way, row in rows.items()}
    (ratio,) = [line for line in lines if line.startswith("IQR/median old / search")]
    floor = float(ratio.split("search / idle machine: ")[1].split("x")[0])
    assert floor == pytest.approx(spreads["search"] / spreads["idle"], rel=0.1, abs=0.06)
    (line,) = [line for line in lines if line.startswith("target ")]
    judged = float(line.split(": ")[1].split("%")[0])
    assert judged == pytest.approx(spreads["search"], abs=0.06)  # the row's spread, to 1 place
    assert _targets(lines) == {"IQR/median of the search's way": "met" if judged <= 5 else "MISSED"}
    assert code == (0 if judged <= 5 else 1)


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


def _run(
    method: str,
    seed: int,
    points: list[tuple[float, float, float]],
    spearman: dict[str, float] | None = None,
    minutes: float = 1.0,
) -> Any:
    """A run starting from the dense model (val map 0.8, test map 0.78, at 1 GFLOP), then
    `points` (val map, GFLOPs, test map: nan for a model off the front)."""
    maps, gflops, tests = zip(*[(0.8, 1.0, 0.78), *points], strict=True)
    return quality.Run(method, seed, maps, gflops, tests, 0.8, 0.78, 1.0, minutes, spearman or {})


NAN = float("nan")


def test_a_runs_front_is_chosen_on_val_and_read_on_test() -> None:
    run = _run("screen-stage", 0, [(0.7, 0.5, 0.72), (0.75, 0.6, 0.66), (0.5, 0.25, 0.45),
                                   (0.4, 0.3, NAN)])  # fmt: skip
    # (0.7, 0.5) is dominated on val by (0.75, 0.6)? No: it costs less. All three measured are
    # non-dominated on val; the unmeasured one is left out
    assert run.front() == [(0.25, 0.5, 0.45), (0.5, 0.7, 0.72), (0.6, 0.75, 0.66), (1.0, 0.8, 0.78)]
    # at 0.65 GFLOPs the user picks the best val map affordable, (0.6, 0.75): test 0.66, although
    # the cheaper one reads 0.72 on test
    assert run.test_map_at(0.65) == 0.66
    assert run.test_map_at(0.55) == 0.72
    assert run.test_map_at(0.2) == 0.0  # nothing that cheap
    dominated = _run("sweep", 0, [(0.7, 0.5, 0.7), (0.6, 0.6, 0.9)])
    assert (0.6, 0.6, 0.9) not in dominated.front()  # dominated on val: its test map never counts


def test_the_mean_map_is_the_step_over_20_to_80_percent_fewer_gflops() -> None:
    # from 0.2 to 0.8 GFLOPs: 0 below 0.25, 0.45 up to 0.5, then 0.72
    run = _run("sweep", 0, [(0.7, 0.5, 0.72), (0.5, 0.25, 0.45)])
    expected = (0.05 * 0 + 0.25 * 0.45 + 0.3 * 0.72) / 0.6
    assert run.mean_map() == pytest.approx(expected, abs=2e-3)  # on a grid of 601 costs


def test_a_runs_hypervolume_and_fewest_gflops_are_of_its_test_maps() -> None:
    run = _run("sweep", 0, [(0.7, 0.5, 0.6), (0.5, 0.25, 0.5)])
    # (0.5 - 0.25) * 0.5 + (1.0 - 0.5) * 0.6, over the dense box 0.78 * 1.0
    assert run.hypervolume() == pytest.approx(0.425 / 0.78)
    assert run.selection_hypervolume(2) == pytest.approx(0.35 / 0.8)  # val maps, 2 trials
    close = _run("sweep", 0, [(0.79, 0.4, 0.775), (0.795, 0.6, 0.7), (0.78, 0.3, 0.76)])
    assert close.fewest_gflops() == 0.4  # 0.76 lies more than 1 test point below 0.78
    assert _run("sweep", 0, [(0.7, 0.5, 0.6)]).fewest_gflops() == 1.0  # the dense model alone


def test_methods_are_summarised_seed_by_seed_against_a_reference() -> None:
    runs = [
        _run("sweep", 0, [(0.7, 0.5, 0.7)], minutes=2.0),
        _run("sweep", 1, [(0.7, 0.5, 0.6)], minutes=2.0),
        _run("screen-stage", 0, [(0.75, 0.4, 0.775)], {"bn_map": 0.9, "pruned_map": 0.7}, 2.2),
        _run("screen-stage", 1, [(0.75, 0.4, 0.772)], {"bn_map": 0.7, "pruned_map": 0.9}, 1.8),
    ]
    sweep, screen = quality.summarise(runs)
    assert (sweep.method, sweep.seeds, screen.method, screen.seeds) == (
        "sweep",
        2,
        "screen-stage",
        2,
    )
    assert sweep.gain == 0.0
    gains = [100 * (runs[2 + s].mean_map() - runs[s].mean_map()) for s in (0, 1)]
    assert screen.gain == pytest.approx(sum(gains) / 2)
    assert (screen.gain_low, screen.gain_high) == (min(gains), max(gains))
    assert gains[1] > gains[0] > 0  # seed 1's sweep is the weaker: the gain is taken per seed
    assert screen.spearman == pytest.approx({"bn_map": 0.8, "pruned_map": 0.8})
    assert screen.minutes_vs == pytest.approx(1.0)
    assert sweep.fewest_gflops == 1.0
    assert screen.fewer_gflops == pytest.approx(1.0 / 0.4)


def _quality_runs(screen_gain: float) -> list[Any]:
    """Two seeds of a sweep, a sensitivity sweep and a screened search `screen_gain` map above
    the sensitivity sweep."""
    runs = []
    for seed in (0, 1):
        runs += [
            _run("sweep", seed, [(0.79, 0.8, 0.775), (0.6, 0.5, 0.6), (0.4, 0.25, 0.4)]),
            _run(
                "sensitivity-layer",
                seed,
                [(0.79, 0.4, 0.775), (0.65, 0.5, 0.65), (0.45, 0.25, 0.45)],
            ),
            _run(
                "screen-stage",
                seed,
                [
                    (0.79, 0.4, 0.775),
                    (0.65, 0.5, 0.65 + screen_gain),
                    (0.45, 0.25, 0.45 + screen_gain),
                ],
                {"bn_map": 0.85, "pruned_map": 0.6},
            ),
        ]
    return runs


def test_the_quality_report_judges_the_screen_against_both_sweeps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quality.report(_quality_runs(0.05), tmp_path) == 0
    out = capsys.readouterr().out
    assert "against sweep (test split" in out
    assert "against sensitivity-layer (test split" in out
    verdicts = _targets(out.splitlines())
    assert set(verdicts.values()) == {"met"}
    assert "Spearman of the screen's bn_map and the finetuned map" in verdicts
    written = json.loads((tmp_path / "search-quality.json").read_text())
    assert set(written["against"]) == {"sweep", "sensitivity-layer"}
    assert written["runs"][2]["spearman"] == {"bn_map": 0.85, "pruned_map": 0.6}
    assert (tmp_path / "search-quality.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.tmp*"))
    # a screened search no better than the sensitivity sweep misses the gain
    assert quality.report(_quality_runs(0.0), tmp_path) == 1
    verdicts = _targets(capsys.readouterr().out.splitlines())
    assert verdicts["mean map gain of screen-stage over the best sensitivity sweep"] == "MISSED"
    # without a sensitivity sweep there is nothing to judge against
    assert quality.report([r for r in _quality_runs(0.05) if r.method != "sensitivity-layer"],
                          tmp_path) == 1  # fmt: skip


def test_the_default_search_is_the_benchmarks_strongest_the_sensitivity_layer_sweep() -> None:
    from search.space import build_space
    from yolov2.config import load_config

    source = quality.DEFAULT
    config = load_config(source)
    space = build_space(config, str(source))
    assert config.search.screen is None
    assert len(space.ratio_names) == 22  # every prunable layer
    # one trial per budget after the dense model: the benchmark's run at the default's 12 trials
    bench_raw = quality.experiment("sensitivity-layer", 0, trials=12, epochs=5)
    bench = bench_raw["search"]
    search = config.search
    assert search.num_samples == 1 + len(search.warm_start_budgets) == bench["num_samples"] == 12
    assert (search.known_points, search.warm_start) == (bench["known_points"], bench["warm_start"])
    assert search.warm_start_budgets == pytest.approx(bench["warm_start_budgets"], abs=0.005)
    assert space.ratios is not None
    shape = space.ratios.model_dump(include={"groups", "low", "high"})
    assert shape == bench["space"]["prune.ratios"]
    # the default's space searches the lr and loss scales too, for trials past the twelfth; its
    # enqueued points have them at the values the benchmark's run finetunes with
    (point,) = space.first_points(config, [dict.fromkeys(space.ratio_names, 0.1)])[1:]
    assert {key: point[key] for key, _ in space.entries} == {
        "finetune.lr": bench_raw["finetune"]["lr"],
        "finetune_loss.coord_scale": bench_raw["loss"]["coord_scale"],
        "finetune_loss.object_scale": bench_raw["loss"]["object_scale"],
    }
    assert "finetune_loss" not in bench_raw  # so the benchmark finetunes with the loss section


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
    screened = method.startswith("screen-")
    assert (config.name, config.search.num_samples, config.search.seed) == (
        f"{method}-s1", 5 if screened else 9, 1
    )  # fmt: skip
    assert (config.finetune.epochs, config.finetune.seed) == (2, 1)
    assert config.data.has_validation  # selected on val, reported on test
    assert (config.search.screen is not None) == screened
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
        assert config.search.sampler == ("tpe" if screened else method.split("-", 1)[0])
        assert len(space.ratio_names) == (22 if "layer" in method else 6)
        assert [key for key, _ in space.entries] == [
            "finetune.lr", "finetune_loss.coord_scale", "finetune_loss.object_scale"
        ]  # fmt: skip
        assert config.search.warm_start == ("sensitivity" if "warm" in method else "none")
        if screened:  # the screen's time paid in trials: 4 fewer, 48 candidates
            assert config.search.screen is not None
            assert (config.search.screen.candidates, config.search.screen.finetune) == (48, 3)


def test_the_quality_benchmark_searches_any_experiment_with_overrides(tmp_path: Path) -> None:
    import yaml

    from yolov2.config import load_config

    other = tmp_path / "other.yaml"
    raw = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "default.yaml").read_text())
    raw["search"]["space"]["prune.ratios"]["high"] = 0.5
    raw["search"]["screen"] = {"candidates": 120, "finetune": 6, "images": 100, "bn_batches": 10}
    other.write_text(yaml.safe_dump(raw))
    made = quality.experiment("sweep", 0, trials=6, epochs=1, base=other,
                              overrides=["model.width=0.125"])  # fmt: skip
    source = tmp_path / "made.yaml"
    source.write_text(yaml.safe_dump(made))
    config = load_config(source)
    assert config.model.width == 0.125
    assert config.search.known_points[-1] == pytest.approx(0.5)  # the file's own range
    with pytest.raises(SystemExit, match=r"other\.yaml: --set 'nokey'"):
        quality.experiment("sweep", 0, trials=6, epochs=1, base=other, overrides=["nokey"])
    # the screened method keeps the experiment's screen settings but for its own counts
    screened = quality.experiment("screen-stage", 0, trials=12, epochs=1, base=other,
                                  overrides=["search.screen.spread=front"], candidates=30)  # fmt: skip
    assert screened["search"]["screen"] == {
        **raw["search"]["screen"],
        "spread": "front",
        "candidates": 30,
        "finetune": 6,
    }


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


equal_cost = _load("bench_screen_equal_cost")


def test_the_equal_cost_benchmark_holds_every_candidate_to_the_sensitivitys_cost() -> None:
    import random

    from yolov2.config import load_config
    from yolov2.pipeline import dense_architecture
    from yolov2.screen import cost_fraction

    config = load_config(equal_cost.DEFAULT)
    fraction = cost_fraction(dense_architecture(config, 5), config.prune, config.data.input_size)
    # an allocation a sensitivity table could give: the first layers kept, the late ones pruned
    sensitivity = tuple([0.0] * 8 + [0.2] * 7 + [0.5] * 7)
    target = fraction(sensitivity)
    found = equal_cost.allocations(sensitivity, near=3, drawn=4, low=0.0, high=0.6,
                                   fraction=fraction, rng=random.Random(0))  # fmt: skip
    assert [kind for kind, _ in found] == ["sensitivity"] + ["near"] * 3 + ["random"] * 4
    assert found[0][1] == sensitivity
    for _, ratios in found[1:]:
        assert len(ratios) == 22
        assert all(0.0 <= r <= 0.6 for r in ratios)
        # met from below, to within a width's rounding
        assert target - 0.02 <= fraction(ratios) <= target + 1e-9
        assert ratios != sensitivity
    # the near ones keep the sensitivity's shape: the late layers pruned more than the first
    for _, ratios in found[1:4]:
        assert sum(ratios[15:]) > sum(ratios[:8])


def test_the_equal_cost_benchmark_judges_each_budget_against_the_sensitivitys_allocation() -> None:
    made = [  # budget, kind, bn_map, pruned_map, finetuned val map and test map
        (0.5, "sensitivity", 0.30, 0.10, 0.70, 0.66),
        (0.5, "near", 0.35, 0.05, 0.72, 0.69),  # the screen's first, and the best finetuned
        (0.5, "near", 0.20, 0.20, 0.60, 0.58),  # pruned_map's first
        (0.5, "random", 0.10, 0.01, 0.50, 0.52),
        (0.3, "sensitivity", 0.60, 0.50, 0.78, 0.75),
        (0.3, "random", 0.65, 0.40, 0.74, 0.71),  # the screen's first, finetuned worse
        (0.3, "near", 0.50, 0.45, 0.76, 0.72),
    ]
    rows = [equal_cost.Row(b, k, (0.1,), 0.1, p, bn, v, t) for b, k, bn, p, v, t in made]
    low, high = equal_cost.judge(rows)
    assert [(v["budget"], v["candidates"]) for v in (low, high)] == [(0.3, 3), (0.5, 4)]
    assert high["spearman"]["bn_map"] == pytest.approx(1.0)
    assert high["spearman"]["pruned_map"] == pytest.approx(0.2)
    assert high["sensitivity_rank"] == 2
    assert high["first_by_bn_map"] == {"kind": "near", "val_map": 0.72, "test_map": 0.69,
                                       "test_gain": pytest.approx(0.03)}  # fmt: skip
    assert high["first_by_pruned_map"]["test_gain"] == pytest.approx(-0.08)
    assert low["spearman"]["bn_map"] == pytest.approx(-0.5)
    assert low["sensitivity_rank"] == 1
    assert low["first_by_bn_map"]["test_gain"] == pytest.approx(-0.04)
    assert low["first_by_val_map"]["kind"] == "sensitivity"
