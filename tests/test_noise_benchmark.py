"""The synthetic noisy-label benchmark: run plan, one real run through train.json, tables."""

import dataclasses
import math

import numpy as np
import pytest

from custom.tools import noise_benchmark as nb
from custom.data.synthetic import split_noise_specs
from custom.tools.training import train_parser

TINY = {
    "tiny": nb.Regime(
        num_training=64,
        num_validation=48,
        num_test=64,
        num_test_shifted=64,
        max_epochs=3,
        batch_size=32,
        learning_rate=2e-3,
        schedule="cosine",
        network="resnet_cifar",
        eval_every=2,
        curve_size=40,
        channels_last=True,
    )
}


def test_plan_reuses_runs_between_parts_and_checks_methods():
    plan = nb.build_plan(
        "report",
        ["bce", "logit_adjusted_bce", "nvum"],
        seeds=2,
        clean_seeds=2,
        stress_noise=["symmetric:0.2"],
        stress_methods=["bce", "nvum_no_prior"],
        ablation_seeds=1,
        order_seeds=2,
        betas=[0.5, 0.9],
        beta_seeds=1,
        data_seeds=[3, 7],
        more_methods=["nvum_iteration"],
        more_seeds=2,
    )
    # the main table on both draws, every other part on the first draw only
    assert len(plan["main"]) == 12 and {r.regime for runs in plan.values() for r in runs} == {"cpu"}
    assert [r.data_seed for r in plan["main"]] == [3] * 6 + [7] * 6
    assert {r.data_seed for part in ("clean", "more", "stress", "order", "ablation", "beta") for r in plan[part]} == {3}
    assert len({r.name for r in plan["main"]}) == 12 and plan["main"][6].name.endswith("_seed0_data7")
    assert [(r.noise, r.method) for r in plan["clean"]] == [("none", "bce")] * 2 + [("none", "nvum")] * 2
    assert {r.noise for r in plan["stress"]} == {"symmetric:0.2"} and not any(r.curve for r in plan["stress"])
    main = {r.name for r in plan["main"]}
    # rows that are main runs are reused; the others are evaluated at best/last only
    assert [r.method for r in plan["ablation"] if r.name not in main] == ["prior_on_reg", "prior_on_bce_and_reg"]
    assert [r.method for r in plan["order"] if r.name not in main] == ["nvum_epoch_end"] * 2
    # the further baselines come with the first draw's bce runs to pair with
    assert [(r.method, r.name in main) for r in plan["more"]] == [("bce", True)] * 2 + [("nvum_iteration", False)] * 2
    # beta 0.9 is the default momentum: the main nvum run of seed 0
    assert [r.beta for r in plan["beta"]] == [0.5, None] and plan["beta"][1].name in main
    runs = nb.unique_runs(plan)
    assert len(runs) == len({r.name for r in runs}) == 12 + 4 + 2 + 2 + 2 + 2 + 1
    assert [r.curve for r in runs] == sorted((r.curve for r in runs), reverse=True)
    with pytest.raises(ValueError, match="unknown method"):
        nb.build_plan("report", ["bce", "mixup"])
    with pytest.raises(ValueError, match="distinct draws"):
        nb.build_plan("report", ["bce"], data_seeds=[1, 1])


def test_the_default_plan_has_two_draws_and_every_method_states_its_teacher():
    """The default plan: the headline rows on two draws; a method row does not change with train.json's defaults."""
    draws = nb.split_list(nb.DEFAULT_DATA_SEEDS, int)
    plan = nb.build_plan("report", nb.split_list(nb.DEFAULT_METHODS), data_seeds=draws)
    assert {r.method for r in plan["main"]} >= {"bce", "bce_ema", "nvum", "nvum_ema"}
    assert sorted({r.data_seed for r in plan["main"]}) == [0, 1] and len(plan["main"]) == 4 * 2 * 5
    assert not any(plan[part] for part in ("more", "stress", "order", "ablation", "beta"))
    for method, overrides in nb.METHODS.items():
        assert "nvum#loss" in overrides and "nvum#use_teacher" in overrides, method
    teacher = {"nvum#use_teacher": True, "nvum#teacher_halflife_epochs": 1.0}
    assert nb.METHODS["nvum_ema"] == {**nb.METHODS["nvum"], **teacher}
    # the head-to-head rule's command: the default plan plus the four main methods on the new draws, 5 seeds each
    assert not set(nb.NEW_DRAWS) & set(draws)
    command = nb.NEW_DRAWS_COMMAND.split()
    every = nb.split_list(command[command.index("--data_seeds") + 1], int)
    assert command[command.index("--output") + 1] == "bundle/docs/noise_benchmark" and "--resume" in command
    more = nb.build_plan("report", nb.split_list(nb.DEFAULT_METHODS), data_seeds=every)
    added = {r.name for r in nb.unique_runs(more)} - {r.name for r in nb.unique_runs(plan)}
    assert len(added) == 4 * 2 * 5 and {r.data_seed for r in more["main"] if r.name in added} == set(nb.NEW_DRAWS)


def test_wrong_labels_fitted_on_a_hand_made_example():
    """Per class, the top ``round(pi_c * N)`` scores are called positive, ``pi_c`` the NOISY prevalence.
    Two classes, 8 images; noisy and clean prevalences differ in both, every score is positive in
    class 0 and negative in class 1, so neither the clean prevalence nor a fixed ``score > 0``
    threshold gives the hand-counted shares below."""
    from custom.tools.noise_benchmark.fitting import predicted_positive, wrong_labels_fitted

    # class 0: noisy positives 0, 1, 2 (3/8), clean positives 0, 3 (2/8): false positives 1, 2; missed 3
    # class 1: noisy positive 4 (1/8), clean positives 4, 5, 6 (3/8): missed 5, 6
    noisy = np.array([[1, 0], [1, 0], [1, 0], [0, 0], [0, 1], [0, 0], [0, 0], [0, 0]])
    clean = np.array([[1, 0], [0, 0], [0, 0], [1, 0], [0, 1], [0, 1], [0, 1], [0, 0]])
    scores = np.array(
        [[0.9, -0.9], [0.8, -0.8], [0.2, -0.7], [0.7, -0.6], [0.6, -0.1], [0.5, -0.2], [0.4, -0.3], [0.3, -0.5]]
    )
    # class 0: the top 3 scores are images 0, 1, 3; class 1: the top 1 is image 4
    expected = np.zeros((8, 2), dtype=bool)
    expected[[0, 1, 3], 0] = True
    expected[4, 1] = True
    assert predicted_positive(scores, noisy).tolist() == expected.tolist()
    # class 0: false positive 1 fitted (called positive), 2 not; missed 3 not fitted (called positive)
    assert wrong_labels_fitted(scores, noisy, clean, classes=[0]) == {
        "all": 1 / 3, "false_positive": 1 / 2, "missed": 0.0, "n_wrong": 3, "n_false_positive": 2, "n_missed": 1}
    # class 1: missed 5 and 6 both fitted (called negative); no false positive
    one = wrong_labels_fitted(scores, noisy, clean, classes=[1])
    assert (one["all"], one["missed"], one["n_wrong"]) == (1.0, 1.0, 2) and np.isnan(one["false_positive"])
    # both classes: 3 of the 5 wrong labels fitted (1 of 2 false positives, 2 of 3 missed)
    both = wrong_labels_fitted(scores, noisy, clean)
    assert (both["all"], both["false_positive"], both["missed"]) == (3 / 5, 1 / 2, 2 / 3)
    assert (both["n_wrong"], both["n_false_positive"], both["n_missed"]) == (5, 2, 3)
    # (with the clean prevalence, top 2 in class 0 and top 3 in class 1, it would be (2/5, 1/2, 1/3);
    # with score > 0, all of class 0 positive and none of class 1, (4/5, 1, 2/3))
    assert np.isnan(wrong_labels_fitted(scores, noisy, noisy)["all"])  # no wrong label: nothing to fit


def test_command_line_lists_keep_bomd_parameters_together():
    assert split_noise_specs("report,bomd:0.2,0.3,symmetric:0.4") == ["report", "bomd:0.2,0.3", "symmetric:0.4"]
    assert split_noise_specs(("report", "symmetric:0.2")) == ["report", "symmetric:0.2"]
    assert split_noise_specs(("bomd:0.2", 0.3)) == ["bomd:0.2,0.3"]  # fire splits "bomd:0.2,0.3" into a tuple
    assert nb.split_list((0.1, 0.5), float) == [0.1, 0.5]


def test_methods_are_overrides_of_existing_train_config_ids():
    """Every override of a run names an id of train.json; the CPU regime's ``network_def`` override
    builds MONAI's ResNet in its CIFAR form (3x3 stride-1 stem, no max-pool)."""
    from monai.networks.nets import ResNet

    config = train_parser()
    for method in nb.METHODS:
        for key in nb.Run("report", "cpu", method, 0, beta=0.5).overrides():
            assert key in config, (method, key)
    net = train_parser({**nb.REGIMES["cpu"].overrides(), "num_classes": 14}).get_parsed_content("network_def")
    assert isinstance(net, ResNet) and net.architecture["conv1_t_stride"] == 1 and net.architecture["no_max_pool"]


@pytest.fixture(scope="module")
def tiny_curve_dir(tmp_path_factory):
    """The bundle folder of the curve run of ``tiny_runs`` (its ``models/model.pt``: the network selected)."""
    return tmp_path_factory.mktemp("tiny_curve")


@pytest.fixture(scope="module")
def tiny_runs(tiny_curve_dir):
    run = nb.Run("report", "tiny", "nvum", seed=1)
    curve = nb.train_run(run, TINY, workdir=tiny_curve_dir)
    again = nb.train_run(run, TINY)
    cheap = nb.train_run(dataclasses.replace(run, curve=False), TINY)
    return curve, again, cheap


@pytest.mark.slow
def test_a_run_records_each_epoch_and_selects_the_epoch_of_its_best_recorded_validation_auc(tiny_runs):
    """What a run records, epoch by epoch; that the recorded validation AUC is the noisy one is
    test_the_recorded_validation_auc_is_against_the_noisy_labels_not_the_clean_ones."""
    curve, _, _ = tiny_runs
    history = curve["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    vals = [row["val"] for row in history]
    assert curve["best"]["epoch"] == 1 + int(np.argmax(vals))  # first epoch of the best noisy-validation AUC
    for row in history:  # the curve (40 images of each test split) every 2 epochs and at the last one
        assert ("curve" in row) == (row["epoch"] in (2, 3)) and ("fitted" in row) == ("curve" in row)
        if "curve" in row:
            assert set(row["curve"]) == {"test", "test_shifted"} and all(0.0 <= v <= 1.0 for v in row["curve"].values())
            assert 0.0 <= row["fitted"]["all"] <= 1.0 and row["fitted"]["n_wrong"] > 0
        assert row["train_reg"] < 0
    # the selected and last figures are on the whole splits; the curve's fitted share on its 40 training images
    for when in ("best", "last"):
        assert set(curve[when]["test"]) == {"test", "test_shifted"} and 0.0 <= curve[when]["fitted"]["all"] <= 1.0
    from custom.tools.noise_benchmark.fitting import reference_levels

    data = train_parser(overrides={f"datalist#{k}": v for k, v in nb.dataset_params(
        "report", TINY["tiny"]).items()}).get_parsed_content("data")
    noisy, clean = data.labels("training"), data.labels("training", "clean_label")
    diseases = list(range(13))
    wrong = lambda n, c: int(((np.asarray(n) != np.asarray(c))[:, diseases]).sum())  # noqa: E731
    assert curve["last"]["fitted"]["n_wrong"] == wrong(noisy, clean)
    assert history[-1]["fitted"]["n_wrong"] == wrong(noisy[:40], clean[:40])
    reference = curve["fitted_reference"]
    assert reference["chance"] == pytest.approx(reference_levels(noisy, clean, diseases)["chance"])
    assert reference["curve_chance"] == pytest.approx(reference_levels(noisy[:40], clean[:40], diseases)["chance"])
    assert curve["overrides"]["nvum#loss"] == "nvum" and curve["overrides"]["datalist#num_training"] == 64
    assert (
        curve["overrides"]["network_def"]["name"] == "ResNet" and curve["overrides"]["nvum#update_before_loss"] is True
    )


@pytest.mark.slow
def test_the_recorded_validation_auc_is_against_the_noisy_labels_not_the_clean_ones(tiny_runs, tiny_curve_dir):
    """The selected network (the run's models/model.pt) scored on the validation images: the AUC the
    run recorded for its epoch is the one against the noisy validation labels (``label``), which
    differs from the one against the truth (``clean_label``)."""
    import torch

    from custom.evaluation.metrics import mean_auc, per_class_auc
    from custom.labels import disease_indices
    from custom.networks import load_weights
    from custom.tools.training import train_parser

    curve, _, _ = tiny_runs
    parser = train_parser({**curve["overrides"], "bundle_root": str(tiny_curve_dir)})
    datalist = parser.get_parsed_content("data")
    net = load_weights(parser.get_parsed_content("network_def"), tiny_curve_dir / "models" / "model.pt").eval()
    transform = parser.get_parsed_content("validate#preprocessing")
    images = torch.stack([torch.as_tensor(transform(dict(item))["image"]) for item in datalist.items("validation")])
    with torch.no_grad():
        logits = net(images.float())
    diseases = disease_indices(datalist.classes)
    noisy_auc = mean_auc(per_class_auc(logits, datalist.labels("validation")), diseases)
    clean_auc = mean_auc(per_class_auc(logits, datalist.labels("validation", "clean_label")), diseases)
    assert abs(noisy_auc - clean_auc) > 0.01  # the two label sets rank this network differently
    assert curve["best"]["val"] == pytest.approx(noisy_auc, abs=1e-6)
    best = next(row for row in curve["history"] if row["epoch"] == curve["best"]["epoch"])
    assert best["val"] == curve["best"]["val"] == max(row["val"] for row in curve["history"])


@pytest.mark.slow
def test_runs_are_deterministic_and_the_curve_does_not_change_the_selected_and_last_figures(tiny_runs):
    curve, again, cheap = tiny_runs
    assert [r["val"] for r in curve["history"]] == [r["val"] for r in again["history"]]
    assert curve["best"] == again["best"] and curve["last"] == again["last"]
    # a run without the curve trains the same network: the same selected and last figures
    assert cheap["best"]["epoch"] == curve["best"]["epoch"]
    for when in ("best", "last"):
        for split in ("test", "test_shifted"):
            assert cheap[when]["test"][split] == pytest.approx(curve[when]["test"][split], abs=1e-9)
    assert all("curve" not in row for row in cheap["history"])


def _record(run, val, test, shifted, fitted=0.5):
    """A run whose curve and whole-split figures agree (as when the curve uses the whole splits)."""
    fit = {"all": fitted, "false_positive": fitted, "missed": fitted, "n_wrong": 10}
    history = [{"epoch": i + 1, "val": v, "curve": {"test": t, "test_shifted": s}, "fitted": fit}
               for i, (v, t, s) in enumerate(zip(val, test, shifted))]
    best = int(np.argmax(val))

    def at(i):
        return {"epoch": i + 1, "val": val[i], "test": history[i]["curve"], "fitted": fit}

    return {"name": run.name, "curve": True, "history": history, "seconds": 1.0,
            "left_out": {"test": ["Hernia"], "test_shifted": []}, "best": at(best), "last": at(len(val) - 1)}


def test_tables_report_selected_last_and_drop_as_mean_and_std_over_seeds(tmp_path):
    runs = [nb.Run("report", "cpu", m, s) for m in ("bce", "nvum") for s in range(2)]
    records = {
        runs[0].name: _record(runs[0], [0.6, 0.7, 0.65], [0.70, 0.80, 0.74], [0.60, 0.70, 0.66], fitted=0.8),
        runs[1].name: _record(runs[1], [0.6, 0.72, 0.7], [0.72, 0.82, 0.76], [0.62, 0.72, 0.62], fitted=0.9),
        runs[2].name: _record(runs[2], [0.6, 0.7, 0.71], [0.70, 0.80, 0.81], [0.60, 0.70, 0.71], fitted=0.3),
        runs[3].name: _record(runs[3], [0.6, 0.7, 0.72], [0.72, 0.80, 0.79], [0.60, 0.70, 0.73], fitted=0.4),
    }
    rows = nb.results_table(runs, records)
    bce, nvum = rows
    assert bce["selected_test"] == pytest.approx([80.0, 82.0]) and bce["last_test"] == pytest.approx([74.0, 76.0])
    assert bce["drop_test"] == pytest.approx([6.0, 6.0]) and bce["drop_test_shifted"] == pytest.approx([4.0, 10.0])
    # drop = selected - last on the whole splits: nvum selects its last epoch in both runs, so 0, though
    # the curve of seed 1 peaks at 80 before its last 79 (the former drop, curve peak - last, read 1.0 there)
    assert nvum["selected_test"] == pytest.approx([81.0, 79.0]) and nvum["drop_test"] == pytest.approx([0.0, 0.0])
    md = nb.main_markdown(rows)
    assert f"81.0 ± {math.sqrt(2):.1f}" in md  # bce selected: mean 81, sample std sqrt(2)
    assert "7.0 ± 4.2" in md  # bce shifted drop: 4 and 10
    assert bce["fitted_last"] == pytest.approx([80.0, 90.0]) and nvum["fitted_last"] == pytest.approx([30.0, 40.0])
    gaps = nb.gaps_markdown(runs, records)
    # paired differences (81 - 80, 79 - 82): mean -1, sample std 2*sqrt(2), t(0.975, 1 dof) = 12.706
    half = 12.706 * 2 * math.sqrt(2) / math.sqrt(2)
    assert f"| `nvum` | 0 | 2 | -1.0 [{-1 - half:+.1f}, {-1 + half:+.1f}] |" in gaps
    targets = {t["target"]: t for t in nb.evaluate_targets({"main": runs}, records, default="nvum")}
    fit = targets["wrong training labels fitted at the last epoch (reported)"]
    assert fit["met"] is None and "`nvum` 35%, `bce` 85%" in fit["measured"]
    selected = targets[
        "default `nvum` at least 1.5 points above `bce` (selected, in-distribution), 95% interval above 0"
    ]
    assert not selected["met"] and selected["measured"].startswith("-1.0 [")
    # last epoch: 81 - 74 and 79 - 76, mean +5 but the interval over 2 pairs reaches below 0
    last = targets["default `nvum` at least 3 points above `bce` (last epoch, in-distribution), 95% interval above 0"]
    assert last["measured"].startswith("+5.0 [") and not last["met"]
    plan = {"main": runs, "ablation": [runs[0], runs[2]], "beta": [runs[2]]}
    path = nb.write_outputs(
        plan, records, tmp_path, {"cpu": nb.REGIMES["cpu"]}, command="python -m custom.cli noise_benchmark --quick"
    )
    text = path.read_text()
    assert "| BCE only | `bce` | 1 |" in text and "| 0.9 | 1 |" in text and "--quick" in text and "## Targets" in text
    assert "- `cpu`, draw 0, `test`: Hernia" in text
    assert (tmp_path / "curve_report_cpu.png").stat().st_size > 1000
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 4


def test_a_report_rewritten_from_the_records_names_the_commands_that_trained_them(tmp_path):
    runs = [nb.Run("report", "cpu", m, 0, curve=False) for m in ("bce", "nvum")]
    records = {r.name: _record(r, [0.6, 0.7], [0.7, 0.8], [0.6, 0.7]) for r in runs}
    regimes = {"cpu": nb.REGIMES["cpu"]}
    nb.write_outputs({"main": runs}, records, tmp_path, regimes, command="cmd one", wall_seconds=600, trained=2)
    # every run read, none trained: the command that trained them and its wall time stay
    text = nb.write_outputs({"main": runs}, records, tmp_path, regimes, command="cmd two", wall_seconds=3,
                            trained=0).read_text()
    assert "Command:\n\n    cmd one\n" in text and "10.0 min wall for the command." in text and "cmd two" not in text
    # a command that trained runs into the folder is added, with its own wall time
    text = nb.write_outputs({"main": runs}, records, tmp_path, regimes, command="cmd three", wall_seconds=120,
                            trained=1).read_text()
    assert "    cmd one\n    cmd three\n" in text
    assert "10.0 min wall for `cmd one` (2 runs), 2.0 min wall for `cmd three` (1 run)." in text


def test_compare_results_reports_the_largest_auc_difference_and_refuses_other_runs(tmp_path):
    import pandas as pd

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    rows = [
        {"name": f"run{i}", "selected_test": 60.0 + i, "last_test": 61.0, "drop_test": float("nan")} for i in range(3)
    ]
    pd.DataFrame(rows).to_csv(a / "results.csv", index=False)
    rows[2]["last_test"] = 61.3  # a rerun that moved one number by 0.3 points
    pd.DataFrame(rows[::-1]).to_csv(b / "results.csv", index=False)  # row order does not matter
    assert nb.compare_results(a, b) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"run2: last_test differs by 0.300"):
        nb.compare_results(a, b, tolerance=0.2)
    pd.DataFrame(rows[:2]).to_csv(b / "results.csv", index=False)
    with pytest.raises(ValueError, match="different runs"):
        nb.compare_results(a, b)


KEYS = ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted")


def _draws_records(gains: dict, seeds: int = 3, methods=("bce", "nvum", "nvum_ema")):
    """Runs of ``methods`` on the draws of ``gains`` (draw -> method -> gain) whose clean-test AUCs are
    bce's plus the gain in points: a number for all four figures, or a dict over :data:`KEYS` (missing: 0).
    The shifted split sits 8 points below the in-distribution one; a per-seed wobble is shared by the methods."""
    runs, records = [], {}
    for draw, by_method in gains.items():
        for method in methods:
            gain = by_method.get(method, 0.0)
            g = {k: (gain if not isinstance(gain, dict) else gain.get(k, 0.0)) / 100 for k in KEYS}
            for seed in range(seeds):
                run = nb.Run("report", "cpu", method, seed, data_seed=draw)
                base = 0.70 + 0.01 * seed + 0.002 * draw
                curves = {split: [b - 0.02, b + g[f"selected_{split}"] + 0.001 * seed, b + g[f"last_{split}"]]
                          for split, b in (("test", base), ("test_shifted", base - 0.08))}
                runs.append(run)
                records[run.name] = _record(run, [0.6, 0.7, 0.69], curves["test"], curves["test_shifted"])
    return runs, records


def test_the_first_rule_picks_the_candidate_on_the_first_draw_and_confirms_it_on_the_second():
    # nvum_ema leads nvum on draw 0 and clears +1.5 / +3 over bce on draw 1, both splits: it becomes the default
    runs, records = _draws_records({0: {"nvum": 2.0, "nvum_ema": 2.5}, 1: {"nvum": 0.5, "nvum_ema": 3.2}})
    choice = nb.choose_default(runs, records)
    assert choice["candidate"] == "nvum_ema" and choice["confirmed"] and choice["default"] == "nvum_ema"
    assert choice["confirmation"]["selected_test"] == pytest.approx(3.2) and "**confirmed**" in choice["text"]
    # only the shifted split is short, at the selected epoch (+1.0) or at the last one (+2.0): not confirmed
    for short in ({"selected_test_shifted": 1.0}, {"last_test_shifted": 2.0}):
        ema = {**dict.fromkeys(KEYS, 3.2), **short}
        runs, records = _draws_records({0: {"nvum": 2.0, "nvum_ema": 2.5}, 1: {"nvum": 0.5, "nvum_ema": ema}})
        choice = nb.choose_default(runs, records)
        assert choice["confirmation"] == pytest.approx(ema)  # each split read from its own figures
        assert choice["candidate"] == "nvum_ema" and choice["confirmed"] is False and choice["default"] == "nvum"
    # the same candidate below +3 at the last epoch of the second draw: the paper's form is the default
    runs, records = _draws_records({0: {"nvum": 2.0, "nvum_ema": 2.5}, 1: {"nvum": 0.5, "nvum_ema": 2.0}})
    choice = nb.choose_default(runs, records)
    assert choice["candidate"] == "nvum_ema" and choice["confirmed"] is False and choice["default"] == "nvum"
    # the candidate is chosen on the first draw only: a larger gain of nvum on the second does not change it
    runs, records = _draws_records({0: {"nvum": 3.0, "nvum_ema": 2.5}, 1: {"nvum": 9.0, "nvum_ema": 0.0}})
    assert nb.choose_default(runs, records)["candidate"] == "nvum"
    # one draw only: nothing confirms the candidate
    first = [r for r in runs if r.data_seed == 0]
    alone = nb.choose_default(first, records)
    assert alone["confirmed"] is None and alone["default"] == "nvum"


def test_the_first_rule_falls_back_to_the_paper_form_without_holding_it_to_the_bar():
    """The fallback of the first rule: an unconfirmed candidate leaves the paper's ``nvum``, whatever
    ``nvum`` itself measures (here +0.5 over bce on draw 1, under the +1.5 the candidate was refused for)."""
    runs, records = _draws_records({0: {"nvum": 2.0, "nvum_ema": 2.5}, 1: {"nvum": 0.5, "nvum_ema": 1.4}})
    choice = nb.choose_default(runs, records)
    assert (choice["candidate"], choice["confirmed"], choice["default"]) == ("nvum_ema", False, nb.PAPER_FORM)
    # the candidate nvum itself, not confirmed: the default is still nvum
    runs, records = _draws_records({0: {"nvum": 3.0, "nvum_ema": 2.5}, 1: {"nvum": 0.5, "nvum_ema": 9.0}})
    choice = nb.choose_default(runs, records)
    assert (choice["candidate"], choice["confirmed"], choice["default"]) == ("nvum", False, "nvum")


def _head_to_head(new: dict, old: dict | None = None, seeds: int = 5):
    """Runs on the new draws 2 and 3 where ``nvum_ema`` - ``nvum`` is ``new`` (number or dict over
    :data:`KEYS`), and on draws 0 and 1 where it is ``old`` (left out when None)."""
    def gains(diff):
        ema = {k: 1.0 + (diff if not isinstance(diff, dict) else diff.get(k, 0.0)) for k in KEYS}
        return {"nvum": 1.0, "nvum_ema": ema}

    draws = {d: gains(new) for d in nb.NEW_DRAWS}
    if old is not None:
        draws = {0: gains(old), 1: gains(old), **draws}
    return _draws_records(draws, seeds=seeds)


def test_the_head_to_head_rule_decides_on_both_splits_and_both_epochs_of_the_new_draws():
    even = dict.fromkeys(KEYS, 0.3) | {"last_test": -0.4, "last_test_shifted": 0.0}
    runs, records = _head_to_head(even)
    choice = nb.choose_default_head_to_head(runs, records)
    assert choice["status"] == "decided" and choice["default"] == "nvum_ema" and choice["pairs"] == 10
    assert choice["decision"] == pytest.approx(even)  # -0.4 at the last epoch is within the 0.5 allowance
    assert "Default recipe: **`nvum_ema`**" in choice["text"]
    # one figure short flips the outcome: the selected epoch of either split below 0, the last of either below -0.5
    for key, value in (("selected_test_shifted", -0.2), ("selected_test", -0.2), ("last_test", -0.6),
                       ("last_test_shifted", -0.6)):
        runs, records = _head_to_head({**even, key: value})
        choice = nb.choose_default_head_to_head(runs, records)
        assert choice["default"] == "nvum" and [k for k, ok in choice["passed"].items() if not ok] == [key], key


def test_the_head_to_head_rule_uses_only_the_new_draws():
    for new, outcome in ((0.3, "nvum_ema"), ({"selected_test_shifted": -0.2}, "nvum")):
        runs, records = _head_to_head(new)
        alone = nb.choose_default_head_to_head(runs, records)
        for old in (-5.0, 5.0):  # draws 0 and 1 that would say the opposite do not change the outcome
            runs, records = _head_to_head(new, old=old)
            choice = nb.choose_default_head_to_head(runs, records)
            assert choice["default"] == alone["default"] == outcome
            assert choice["decision"] == pytest.approx(alone["decision"]) and choice["pairs"] == 10
            # they are shown: per draw, and pooled with the new draws over all four
            assert list(choice["differences"]) == ["draw 0", "draw 1", "draw 2", "draw 3", "new draws", "all draws"]
            assert np.mean(choice["differences"]["draw 0"]["selected_test"]) == pytest.approx(old)
    # no run of the new draws: not run yet, no default; one new-draw pair missing: incomplete, no default
    runs, records = _head_to_head(0.3, old=0.3)
    old_only = [r for r in runs if r.data_seed not in nb.NEW_DRAWS]
    choice = nb.choose_default_head_to_head(old_only, records)
    assert choice["status"] == "not run" and choice["default"] is None and "not run yet" in choice["text"]
    assert nb.NEW_DRAWS_COMMAND in choice["text"] and "--data_seeds 0,1,2,3 --resume true" in nb.NEW_DRAWS_COMMAND
    missing = [r for r in runs if not (r.data_seed == 3 and r.seed == 4 and r.method == "nvum_ema")]
    choice = nb.choose_default_head_to_head(missing, records)
    assert choice["status"] == "incomplete" and choice["default"] is None and "9 of 10 pairs" in choice["text"]


def test_results_print_both_rules_and_the_head_to_head_outcome_or_not_run_yet(tmp_path):
    runs, records = _head_to_head(0.3, old=-1.0)
    old_only = [r for r in runs if r.data_seed not in nb.NEW_DRAWS]
    text = nb.write_outputs({"main": old_only}, records, tmp_path / "a", {"cpu": nb.REGIMES["cpu"]}).read_text()
    assert nb.HEAD_TO_HEAD_RULE in text and nb.RULE in text and "Outcome: **not run yet**" in text
    assert "Until the head-to-head rule is decided, the default recipe is the first rule's, `nvum`." in text
    text = nb.write_outputs({"main": runs}, records, tmp_path / "b", {"cpu": nb.REGIMES["cpu"]}).read_text()
    assert "Outcome: Data seeds 2 and 3 (10 pairs)" in text and "Default recipe: **`nvum_ema`**" in text
    assert "| new draws | 10 | +0.3 [" in text and "| all draws | 20 |" in text and "| draw 0 | 5 | -1.0 [" in text
    assert "About the default recipe, `nvum_ema`." in text and "Until the head-to-head" not in text
    assert "| report | all | `nvum_ema` | 20 |" in text  # the main table over all four draws


def test_targets_are_judged_on_every_pair_of_both_draws_and_show_each_draw(tmp_path):
    runs, records = _draws_records({0: {"nvum": 2.0, "nvum_ema": 2.5}, 1: {"nvum": 0.5, "nvum_ema": 3.5}})
    rows = {t["target"]: t for t in nb.evaluate_targets({"main": runs}, records)}
    selected = rows[
        "default `nvum_ema` at least 1.5 points above `bce` (selected, in-distribution), 95% interval above 0"
    ]
    # the mean over the draws pools the 6 (draw, seed) pairs: (2.5 * 3 + 3.5 * 3) / 6 = 3.0
    assert selected["measured"].startswith("+3.0 [") and "(6 pairs)" in selected["measured"] and selected["met"]
    assert selected["per_draw"][0].startswith("+2.5") and selected["per_draw"][1].startswith("+3.5")
    text = nb.write_outputs({"main": runs}, records, tmp_path, {"cpu": nb.REGIMES["cpu"]}).read_text()
    assert nb.RULE in text and "Default recipe: **`nvum_ema`**" in text
    assert "| report | all | `nvum_ema` | 6 |" in text and "| `nvum_ema` | all | 6 |" in text
    assert (tmp_path / "curve_report_cpu_data1.png").is_file()
    table = __import__("pandas").read_csv(tmp_path / "results.csv")
    assert sorted(table["data_seed"].unique()) == [0, 1] and len(table) == len(runs)


def _classes_record(run, shifted: dict, left_out: list):
    """A run (selected = last epoch) whose shifted split has per-class AUCs ``shifted`` (disease -> AUC,
    the others 0.8) and leaves out ``left_out``; its recorded mean is over the diseases it keeps, as the
    recorder computes it."""
    from custom.data.synthetic import CLASSES

    diseases = [c for c in CLASSES if c != "No Finding"]
    per_class = {"test": [None if c == "No Finding" else 0.9 for c in CLASSES],
                 "test_shifted": [None if c == "No Finding" else shifted.get(c, 0.8) for c in CLASSES]}
    kept = [CLASSES.index(c) for c in diseases if c not in left_out]
    means = {split: float(np.mean([aucs[i] for i in kept if split == "test_shifted"] or [0.9]))
             for split, aucs in per_class.items()}
    at = {"epoch": 1, "val": 0.7, "test": means, "test_classes": per_class}
    return {"name": run.name, "curve": False, "history": [{"epoch": 1, "val": 0.7}], "seconds": 1.0, "best": at,
            "last": at, "left_out": {"test": [], "test_shifted": left_out}}


def test_left_out_diseases_are_each_runs_own_and_pooled_means_use_the_diseases_every_draw_keeps(tmp_path):
    """Draw 1 leaves Pneumothorax out of its shifted mean as well as Edema: each draw's rows keep their own
    means; rows, differences and targets pooled over the draws average over the 11 diseases both keep."""
    runs = [nb.Run("report", "cpu", m, 0, curve=False, data_seed=d) for d in (0, 1) for m in ("bce", "nvum")]
    shifted = {"bce": {"Pneumothorax": 0.5}, "nvum": {"Pneumothorax": 0.95}}
    nvum_shifted = {c: 0.85 for c in ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                      "Pneumonia", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")}
    records = {}
    for r in runs:
        aucs = {**(nvum_shifted if r.method == "nvum" else {}), **shifted[r.method]}
        records[r.name] = _classes_record(r, aucs, ["Edema"] if r.data_seed == 0 else ["Pneumothorax", "Edema"])
    by_draw = {(row["method"], row["draw"]): row for row in nb.results_table(runs, records)}
    # draw 0 keeps Pneumothorax (12 diseases): bce (11 * 0.8 + 0.5) / 12; draw 1 (11 diseases): 0.8
    assert by_draw["bce", 0]["selected_test_shifted"] == pytest.approx([100 * (11 * 0.8 + 0.5) / 12])
    assert by_draw["bce", 1]["selected_test_shifted"] == pytest.approx([80.0])
    pooled = {row["method"]: row for row in nb.results_table(runs, records, by_draw=False)}
    assert pooled["bce"]["selected_test_shifted"] == pytest.approx([80.0, 80.0])
    assert pooled["nvum"]["last_test_shifted"] == pytest.approx([85.0, 85.0])
    gaps = nb.paired_gaps(runs, records)["nvum"]
    assert gaps["selected_test_shifted"] == pytest.approx([5.0, 5.0])  # own means would give 8.3 on draw 0
    assert nb.paired_gaps(runs[:2], records)["nvum"]["selected_test_shifted"] == pytest.approx([100 / 12])
    text = nb.write_outputs({"main": runs}, records, tmp_path, {"cpu": nb.REGIMES["cpu"]}).read_text()
    assert "- `cpu`, draw 0, `test_shifted`: Edema\n" in text
    assert "- `cpu`, draw 1, `test_shifted`: Pneumothorax, Edema\n" in text
    assert "every draw pooled (`all` rows, differences and targets over the draws): `test`: none; `test_shifted`: " \
           "Edema, Pneumothorax" in text
    table = __import__("pandas").read_csv(tmp_path / "results.csv").set_index("name")
    assert table.loc[runs[0].name, "selected_test_shifted"] == pytest.approx(100 * (11 * 0.8 + 0.5) / 12)


def test_chance_level_of_wrong_labels_fitted_matches_random_scores():
    from custom.tools.noise_benchmark.fitting import chance_fitted, reference_levels, wrong_labels_fitted

    rng = np.random.default_rng(0)
    clean = (rng.random((400, 3)) < [0.1, 0.3, 0.05]).astype(int)
    flip = rng.random(clean.shape) < [0.2, 0.1, 0.3]
    noisy = np.where(flip, 1 - clean, clean)
    # hand count: per class, a false positive is fitted with probability k/N, a missed positive with 1 - k/N
    share = noisy.mean(axis=0)
    fp, missed = ((noisy == 1) & (clean == 0)).sum(axis=0), ((noisy == 0) & (clean == 1)).sum(axis=0)
    hand = float((fp * share + missed * (1 - share)).sum() / (fp.sum() + missed.sum()))
    assert chance_fitted(noisy, clean) == pytest.approx(hand)
    random = [wrong_labels_fitted(rng.random(clean.shape), noisy, clean)["all"] for _ in range(200)]
    assert np.mean(random) == pytest.approx(hand, abs=0.01)
    levels = reference_levels(noisy, clean)
    # a ranking by the clean labels fits only what the noisy prevalence forces: below chance, above 0 here
    assert levels["clean_ranking"] < levels["chance"] and levels["chance"] == pytest.approx(hand)


def test_train_json_trains_the_default_recipe_the_committed_runs_choose():
    """The recipe the rules choose on the committed runs (the head-to-head outcome once decided) is what train.json's
    nvum group trains by default, and what metadata.json's description names."""
    import json

    from conftest import CONFIGS
    from custom.tools.pages import load_benchmark

    plan, records = load_benchmark()
    default = nb.default_recipe(plan["main"], records)
    assert default in nb.NVUM_FAMILY
    nvum = json.loads((CONFIGS / "train.json").read_text())["nvum"]
    for key, value in nb.METHODS[default].items():
        assert nvum[key.split("#", 1)[1]] == value, (default, key)
    assert f"recipe `{default}`" in json.loads((CONFIGS / "metadata.json").read_text())["description"]
