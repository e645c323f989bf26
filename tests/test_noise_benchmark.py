"""The synthetic noisy-label benchmark: run plan, one real run through train.json, tables."""

import dataclasses
import math

import numpy as np
import pytest

from custom.tools import noise_benchmark as nb
from custom.tools.synthetic import split_noise_specs
from custom.tools.training import train_parser

TINY = {"tiny": nb.Regime(num_training=64, num_validation=48, num_test=64, max_epochs=3)}


def test_plan_reuses_runs_between_parts_and_checks_methods():
    plan = nb.build_plan(["report", "symmetric:0.2"], ["bce", "logit_adjusted_bce", "nvum_epoch"], seeds=2, ablation_seeds=1, betas=[0.1, 0.9])
    assert len(plan["main"]) == 6 and len(plan["stress"]) == 3 and len(plan["short"]) == 3
    assert {r.noise for r in plan["stress"]} == {"symmetric:0.2"} and {r.regime for r in plan["short"] + plan["stress"]} == {"short"}
    assert {r.regime for r in plan["main"] + plan["ablation"] + plan["beta"]} == {"memorisation"}
    main = {r.name for r in plan["main"]}
    # ablation rows that are main runs are reused; the two new ones are evaluated at best/last only
    new = [r for r in plan["ablation"] if r.name not in main]
    assert [r.method for r in new] == ["prior_on_reg"] and not any(r.curve for r in new)
    # beta 0.9 is the default momentum: the main nvum_epoch run of seed 0
    assert [r.beta for r in plan["beta"]] == [0.1, None] and plan["beta"][1].name in main
    runs = nb.unique_runs(plan)
    assert len(runs) == len({r.name for r in runs}) == 6 + 3 + 3 + 1 + 1
    assert [r.curve for r in runs] == sorted((r.curve for r in runs), reverse=True)
    with pytest.raises(ValueError, match="unknown method"):
        nb.build_plan(["report"], ["bce", "mixup"])


def test_command_line_lists_keep_bomd_parameters_together():
    assert split_noise_specs("report,bomd:0.2,0.3,symmetric:0.4") == ["report", "bomd:0.2,0.3", "symmetric:0.4"]
    assert split_noise_specs(("report", "symmetric:0.2")) == ["report", "symmetric:0.2"]
    assert split_noise_specs(("bomd:0.2", 0.3)) == ["bomd:0.2,0.3"]  # fire splits "bomd:0.2,0.3" into a tuple
    assert nb.split_list((0.1, 0.5), float) == [0.1, 0.5]


def test_methods_are_overrides_of_existing_train_config_ids():
    config = train_parser()
    for method in nb.METHODS:
        for key in nb.Run("report", "short", method, 0, beta=0.5).overrides():
            assert key in config, (method, key)


@pytest.fixture(scope="module")
def tiny_runs():
    run = nb.Run("report", "tiny", "nvum_epoch", seed=1)
    curve = nb.train_run(run, TINY)
    again = nb.train_run(run, TINY)
    cheap = nb.train_run(dataclasses.replace(run, curve=False), TINY)
    return curve, again, cheap


def test_a_run_records_every_epoch_and_selects_on_noisy_validation(tiny_runs):
    curve, _, _ = tiny_runs
    history = curve["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    vals = [row["val"] for row in history]
    assert curve["best"]["epoch"] == 1 + int(np.argmax(vals))  # first epoch of the best noisy-validation AUC
    assert curve["best"]["test"] == history[curve["best"]["epoch"] - 1]["test"]
    assert curve["last"]["test"] == history[-1]["test"]
    for row in history:
        assert set(row["test"]) == {"test", "test_shifted"} and all(0.0 <= v <= 1.0 for v in row["test"].values())
        assert row["train_reg"] < 0  # the NVUM loss ran (REG is <= 0 and the memory is non-zero after epoch 1)
    assert curve["overrides"]["nvum#loss"] == "nvum" and curve["overrides"]["datalist#num_training"] == 64


def test_runs_are_deterministic_and_best_last_evaluation_matches_the_curve(tiny_runs):
    curve, again, cheap = tiny_runs
    assert [r["val"] for r in curve["history"]] == [r["val"] for r in again["history"]]
    assert curve["best"] == again["best"] and curve["last"] == again["last"]
    # evaluating only the kept best weights and the final weights gives the curve's numbers
    assert cheap["best"]["epoch"] == curve["best"]["epoch"]
    for split in ("test", "test_shifted"):
        assert cheap["best"]["test"][split] == pytest.approx(curve["best"]["test"][split], abs=1e-9)
        assert cheap["last"]["test"][split] == pytest.approx(curve["last"]["test"][split], abs=1e-9)
    assert all("test" not in row for row in cheap["history"])


def _record(run, val, test, shifted):
    history = [{"epoch": i + 1, "val": v, "test": {"test": t, "test_shifted": s}} for i, (v, t, s) in enumerate(zip(val, test, shifted))]
    best = int(np.argmax(val))
    return {"name": run.name, "history": history, "seconds": 1.0, "best": {"epoch": best + 1, "val": val[best], "test": history[best]["test"]}, "last": {"epoch": len(val), "val": val[-1], "test": history[-1]["test"]}}


def test_tables_report_selected_last_and_drop_as_mean_and_std_over_seeds(tmp_path):
    runs = [nb.Run("report", "memorisation", m, s) for m in ("bce", "nvum_epoch") for s in range(2)]
    records = {
        runs[0].name: _record(runs[0], [0.6, 0.7, 0.65], [0.70, 0.80, 0.74], [0.60, 0.70, 0.66]),
        runs[1].name: _record(runs[1], [0.6, 0.72, 0.7], [0.72, 0.82, 0.76], [0.62, 0.72, 0.62]),
        runs[2].name: _record(runs[2], [0.6, 0.7, 0.71], [0.70, 0.80, 0.81], [0.60, 0.70, 0.71]),
        runs[3].name: _record(runs[3], [0.6, 0.7, 0.72], [0.72, 0.80, 0.79], [0.60, 0.70, 0.73]),
    }
    rows = nb.results_table(runs, records)
    bce, nvum = rows
    assert bce["selected_test"] == pytest.approx([80.0, 82.0]) and bce["last_test"] == pytest.approx([74.0, 76.0])
    assert bce["drop_test"] == pytest.approx([6.0, 6.0]) and bce["drop_test_shifted"] == pytest.approx([4.0, 10.0])
    assert nvum["selected_test"] == pytest.approx([81.0, 79.0]) and nvum["drop_test"] == pytest.approx([0.0, 1.0])
    md = nb.main_markdown(rows)
    assert f"81.0 ± {math.sqrt(2):.1f}" in md  # bce selected: mean 81, sample std sqrt(2)
    assert "7.0 ± 4.2" in md  # bce shifted drop: 4 and 10
    gaps = nb.gaps_markdown(runs, records)
    assert "| nvum_epoch | 2 | -1.0 ± 2.8 |" in gaps  # (81 - 80, 79 - 82)
    plan = {"main": runs, "stress": [], "short": [], "ablation": [runs[0], runs[2]], "beta": [runs[2]]}
    path = nb.write_outputs(plan, records, tmp_path, {"memorisation": nb.REGIMES["memorisation"]}, command="python -m custom.cli noise_benchmark --quick")
    text = path.read_text()
    assert "| BCE only | `bce` | 1 |" in text and "| 0.9 | 1 |" in text and "--quick" in text
    assert (tmp_path / "curve_report_memorisation.png").stat().st_size > 1000
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 4


def test_compare_results_reports_the_largest_auc_difference_and_refuses_other_runs(tmp_path):
    import pandas as pd

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    rows = [{"name": f"run{i}", "selected_test": 60.0 + i, "last_test": 61.0, "drop_test": float("nan")} for i in range(3)]
    pd.DataFrame(rows).to_csv(a / "results.csv", index=False)
    rows[2]["last_test"] = 61.3  # a rerun that moved one number by 0.3 points
    pd.DataFrame(rows[::-1]).to_csv(b / "results.csv", index=False)  # row order does not matter
    assert nb.compare_results(a, b) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"run2: last_test differs by 0.300"):
        nb.compare_results(a, b, tolerance=0.2)
    pd.DataFrame(rows[:2]).to_csv(b / "results.csv", index=False)
    with pytest.raises(ValueError, match="different runs"):
        nb.compare_results(a, b)
