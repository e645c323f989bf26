"""Synthetic noisy-label benchmark: NVUM against its baselines, trained through the bundle.

``python -m custom.cli noise_benchmark`` trains every method of a run matrix on the synthetic
chest X-ray set (:mod:`custom.synthetic`) and records, after every epoch, the mean AUC over the
13 diseases on the *noisy* validation split (model selection) and on the two *clean* test
splits (``test``: in-distribution, ``test_shifted``: PadChest-like prevalence and image style).

Every run is the bundle's own training job: ``bundle/configs/train.json`` is read with MONAI's
``ConfigParser``, the method is a handful of overrides of its ids (:data:`METHODS`), and the
trainer, evaluator, loss, memory, memory updater and EMA teacher are the ones the config builds.
The benchmark only changes what is not part of the method: smaller data (the regime), MLflow
and the per-epoch resume checkpoint off, the per-iteration progress bar and per-epoch lines off
(the best ``model.pt`` is still saved, in a temporary folder), and one
handler added that evaluates the network the config validates (the EMA teacher where there is
one) on the clean test splits (:class:`CleanTestAUC`).

Model selection uses the noisy validation labels only: "best" is the epoch of the best noisy
validation mean AUC (the checkpoint the bundle saves as ``model.pt``); "last" is the final epoch;
"peak" is the best clean-test AUC over the epochs, reported only to measure memorisation
(``drop`` = peak - last). Nothing is ever chosen on the clean test labels.

Runs are independent and deterministic (``monai.utils.set_determinism(seed)``, one CPU thread
per run): they go to ``workers`` processes, each run writes ``runs/<name>.json`` in the output
folder, and the tables and figures are built from those files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .labels import disease_indices

#: The train.json of the bundle (the benchmark trains through it).
TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.json"

#: Methods: overrides of train.json ids (every other id keeps its train.json value).
METHODS: dict[str, dict] = {
    # plain BCE (CheXNet-style), BCE summed over classes
    "bce": {"loss_name": "bce"},
    # BCE on z + log(pi) at train time (= the paper's "prior on BCE" ablation row)
    "logit_adjusted_bce": {"loss_name": "logit_adjusted_bce"},
    # plain BCE, validated and tested through an EMA teacher (decay 0.99)
    "bce_ema": {"loss_name": "bce", "use_teacher": True},
    # NVUM as in the paper: dot REG, memory updated once per epoch
    "nvum_epoch": {"loss_name": "nvum", "memory_schedule": "epoch"},
    # NVUM as in the authors' code: per-iteration update from an EMA teacher, elementwise REG,
    # memory mixing, clamping of p
    "nvum_iteration": {"loss_name": "nvum", "memory_schedule": "iteration", "use_teacher": True, "reg": "elementwise", "mix_memory": True, "reg_clamp": 1e-4},
    # ablation: memory without the prior, prior added to the logits inside REG
    "prior_on_reg": {"loss_name": "nvum", "unbiased_memory": False, "prior_in_reg": True},
    # ablation: memory without the prior, prior inside both BCE and REG
    "prior_on_bce_and_reg": {"loss_name": "nvum", "unbiased_memory": False, "prior_in_bce": True, "prior_in_reg": True},
}

#: The paper's ablation rows (Fig. 2, left): label -> method. The paper's fifth row, the prior in
#: both BCE and REG, is the method ``prior_on_bce_and_reg`` (left out of the default table for time).
ABLATION_ROWS = {
    "BCE only": "bce",
    "prior on BCE only": "logit_adjusted_bce",
    "prior on REG only": "prior_on_reg",
    "NVUM (prior in the memory)": "nvum_epoch",
}


@dataclasses.dataclass(frozen=True)
class Regime:
    """Data size and length of a run.

    Args:
        num_training, num_validation: sizes of the noisy splits.
        num_test: size of each clean test split (in-distribution and shifted).
        max_epochs: training epochs (learning rate x0.1 at 70% and 90% of them, as train.json).
    """

    num_training: int
    num_validation: int
    num_test: int
    max_epochs: int


#: The regimes. ``memorisation``: few training images and many epochs, so that plain BCE goes on
#: fitting the noisy training labels (its training BCE falls from 3.2 after 4 epochs to 1.1-1.2
#: after 20; README "Results" says how far that gets); ``short``: four times the images, three
#: epochs (under-fitted); ``quick``: a check of the whole pipeline. Sizes are set by the time
#: budget of the full benchmark (40 min measured on two CPU cores; the budget is an hour).
REGIMES: dict[str, Regime] = {
    "memorisation": Regime(num_training=500, num_validation=300, num_test=500, max_epochs=20),
    "short": Regime(num_training=2000, num_validation=300, num_test=500, max_epochs=3),
    "quick": Regime(num_training=512, num_validation=256, num_test=256, max_epochs=3),
}


def _noise_slug(noise: str) -> str:
    """A noise spec as a file-name part: ``symmetric:0.2`` -> ``symmetric02``, ``bomd:0.2,0.3`` -> ``bomd02-03``."""
    return noise.replace(":", "").replace(",", "-").replace(".", "")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the matrix."""

    noise: str
    regime: str
    method: str
    seed: int
    beta: float | None = None  # memory momentum override (beta sweep)
    curve: bool = True  # evaluate the clean test splits after every epoch (else at best and last only)
    extra: tuple = ()  # further ((config id, value), ...) overrides, e.g. (("learning_rate", 3e-4),)

    @property
    def name(self) -> str:
        beta = f"_beta{self.beta:g}" if self.beta is not None else ""
        extra = "".join(f"_{k.replace('#', '-')}{v:g}" if isinstance(v, float) else f"_{k.replace('#', '-')}{v}" for k, v in self.extra)
        return f"{_noise_slug(self.noise)}_{self.regime}_{self.method}{beta}{extra}_seed{self.seed}"

    def overrides(self) -> dict:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {sorted(METHODS)}")
        out = dict(METHODS[self.method])
        if self.beta is not None:
            out["memory_momentum"] = float(self.beta)
        out.update(dict(self.extra))
        return out


# --------------------------------------------------------------------------------------
# the per-epoch clean-test handler
# --------------------------------------------------------------------------------------


class CleanTestAUC:
    """Records noisy-validation and clean-test mean AUC of a training run, epoch by epoch.

    Attach it to the trainer after the validation handler. After every epoch it reads the
    evaluator's key metric (noisy validation mean AUC) and, with ``every_epoch``, evaluates
    ``network`` on each test set. Without ``every_epoch`` it keeps a copy of the weights of the
    epoch with the best validation metric and evaluates that copy and the final weights once,
    when training completes (cheaper, same numbers at those two epochs).

    Args:
        network: the network that is validated (``@teacher.eval_network``).
        evaluator: the validation engine.
        test_sets: name -> ``(images, labels)``: a (N, 3, H, W) float tensor of preprocessed
            images and their (N, C) clean labels.
        classes: class names (the mean is over the diseases, No Finding excluded).
        every_epoch: evaluate the test sets after every epoch.
        batch_size: inference batch size.
    """

    def __init__(self, network, evaluator, test_sets: dict, classes: Sequence[str], every_epoch: bool = True, batch_size: int = 512):
        self.network, self.evaluator = network, evaluator
        self.test_sets, self.diseases = test_sets, disease_indices(classes)
        self.every_epoch, self.batch_size = bool(every_epoch), int(batch_size)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.last: dict | None = None
        self._best_state = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def evaluate(self, network=None) -> tuple[dict[str, float], dict[str, list]]:
        """Mean disease AUC and per-class AUCs (NaN: undefined) of ``network`` (default: the
        tracked one) on every test set."""
        import torch

        from .metrics import mean_auc, per_class_auc

        net = network if network is not None else self.network
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        means, classes = {}, {}
        with torch.no_grad():
            for name, (images, labels) in self.test_sets.items():
                logits = torch.cat([net(images[i : i + self.batch_size].to(device)).float().cpu() for i in range(0, len(images), self.batch_size)])
                aucs = per_class_auc(logits, labels)
                means[name] = mean_auc(aucs, self.diseases)
                classes[name] = [None if math.isnan(a) else float(a) for a in aucs]
        net.train(was_training)
        return means, classes

    def _epoch(self, engine) -> None:
        state = self.evaluator.state
        epoch = engine.state.epoch
        row = {"epoch": epoch, "val": float(state.metrics[state.key_metric_name])}
        for key in ("train_loss", "train_bce", "train_reg"):
            if key in engine.state.metrics:
                row[key] = float(engine.state.metrics[key])
        improved = state.best_metric_epoch == epoch
        if self.every_epoch:
            row["test"], row["test_classes"] = self.evaluate()
            if improved:
                self.best = {"epoch": epoch, "val": row["val"], "test": row["test"], "test_classes": row["test_classes"]}
        elif improved:
            self._best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            self.best = {"epoch": epoch, "val": row["val"]}
        self.history.append(row)

    def _completed(self, engine) -> None:
        last = self.history[-1]
        if self.every_epoch:
            self.last = {"epoch": last["epoch"], "val": last["val"], "test": last["test"], "test_classes": last["test_classes"]}
            return
        self.last = {"epoch": last["epoch"], "val": last["val"]}
        self.last["test"], self.last["test_classes"] = self.evaluate()
        if self.best is not None and self._best_state is not None:
            if self.best["epoch"] == last["epoch"]:
                self.best["test"], self.best["test_classes"] = self.last["test"], self.last["test_classes"]
            else:
                best_net = copy.deepcopy(self.network)
                best_net.load_state_dict(self._best_state)
                self.best["test"], self.best["test_classes"] = self.evaluate(best_net)
        self._best_state = None


# --------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------

_TEST_CACHE: dict = {}


def dataset_params(noise: str, regime: Regime, data_seed: int = 0) -> dict:
    """Parameters of the synthetic set of a (noise, regime) pair (``custom.synthetic_datalist``)."""
    return {
        "seed": data_seed,
        "num_training": regime.num_training,
        "num_validation": regime.num_validation,
        "num_test": regime.num_test,
        "num_test_shifted": regime.num_test,
        "image_size": 32,
        "noise": noise,
    }


def _test_sets(parser, datalist) -> dict:
    """Preprocessed clean test images and labels of every test split (cached per data list)."""
    import torch

    key = str(datalist.path)
    if key not in _TEST_CACHE:
        transform = parser.get_parsed_content("validate#preprocessing")
        sets = {}
        for split in datalist.test_splits:
            items = datalist.items(split)
            images = torch.stack([torch.as_tensor(transform(dict(item))["image"]) for item in items]).float()
            sets[split] = (images, datalist.labels(split))
        _TEST_CACHE.clear()
        _TEST_CACHE[key] = sets
    return _TEST_CACHE[key]


#: training handlers of train.json that the benchmark leaves out: the full-state checkpoint of
#: every epoch (for resuming; about 90 MB written per epoch) and the per-iteration progress bar
#: and per-epoch line (the benchmark prints one line per run instead).
_DROPPED_HANDLERS = {"custom.TrainingCheckpointSaver", "custom.ProgressBar", "custom.EpochSummary"}


def train_run(run: Run, regimes: dict[str, Regime] | None = None, workdir=None, data_seed: int = 0, threads: int | None = 1, config_file=TRAIN_CONFIG) -> dict:
    """Train one run of the matrix through ``train.json`` and return its record.

    Returns:
        a JSON-ready dict: the run's fields, the config overrides, ``history`` (per epoch:
        noisy validation AUC, losses and, for curve runs, clean-test AUC per split), ``best``
        (epoch chosen on noisy validation, its test AUCs), ``last`` and ``seconds``.
    """
    import tempfile

    import torch
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    regime = (regimes or REGIMES)[run.regime]
    start, cpu_start = time.perf_counter(), time.process_time()
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    with tempfile.TemporaryDirectory(prefix="nvum-bench-") as tmp:
        parser = ConfigParser()
        parser.read_config(str(config_file))
        overrides = {
            "bundle_root": str(workdir or tmp),
            "mlflow": False,
            "seed": int(run.seed),
            "max_epochs": regime.max_epochs,
            **{f"datalist#{k}": v for k, v in dataset_params(run.noise, regime, data_seed).items()},
            **run.overrides(),
        }
        parser.update(overrides)
        parser["train#handlers"] = [h for h in parser["train#handlers"] if h.get("_target_") not in _DROPPED_HANDLERS]
        set_determinism(seed=int(run.seed))
        datalist = parser.get_parsed_content("datalist")
        tracker = CleanTestAUC(
            network=parser.get_parsed_content("teacher").eval_network,
            evaluator=parser.get_parsed_content("validate#evaluator"),
            test_sets=_test_sets(parser, datalist),
            classes=datalist.classes,
            every_epoch=run.curve,
        )
        trainer = parser.get_parsed_content("train#trainer")
        tracker.attach(trainer)
        try:
            trainer.run()
        finally:
            set_determinism(seed=None)
            used_threads = torch.get_num_threads()
            torch.set_num_threads(threads_before)
    return {
        **dataclasses.asdict(run),
        "name": run.name,
        "overrides": {k: v for k, v in overrides.items() if k not in ("bundle_root",)},
        "history": tracker.history,
        "best": tracker.best,
        "last": tracker.last,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "threads": used_threads,
    }


# --------------------------------------------------------------------------------------
# the run matrix
# --------------------------------------------------------------------------------------


def _worker(run: Run, regimes: dict, data_seed: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return train_run(run, regimes, data_seed=data_seed, threads=1)


def _summary_line(record: dict) -> str:
    best, last = record["best"], record["last"]
    splits = list(last["test"])
    fmt = lambda d: " ".join(f"{s} {d['test'][s]:.4f}" for s in splits)  # noqa: E731
    return f"{record['name']}: best (epoch {best['epoch']}, val {best['val']:.4f}) {fmt(best)} | last {fmt(last)} | {record['seconds']:.0f} s"


def run_matrix(runs: Sequence[Run], output, regimes: dict[str, Regime] | None = None, workers: int = 2, data_seed: int = 0, resume: bool = False) -> list[dict]:
    """Train every run (``workers`` processes, one thread each), writing ``runs/<name>.json``.

    With ``resume`` a run whose file exists with the same settings is read, not trained again.
    Prints one line per finished run (its result and time) under a progress bar over runs.
    """
    from tqdm import tqdm

    from .synthetic import ensure_synthetic

    regimes = regimes or REGIMES
    runs_dir = Path(output) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    records, pending = {}, []
    for run in runs:
        path = runs_dir / f"{run.name}.json"
        if resume and path.is_file():
            record = json.loads(path.read_text())
            spec = json.loads(json.dumps(dataclasses.asdict(run)))
            if {k: record.get(k) for k in spec} == spec and record.get("regime_params") == dataclasses.asdict(regimes[run.regime]) and record.get("data_seed") == data_seed:
                records[run.name] = record
                continue
        pending.append(run)
    for noise, regime in sorted({(r.noise, r.regime) for r in pending}):  # generate the data once, before the workers start
        ensure_synthetic(None, progress=False, **dataset_params(noise, regimes[regime], data_seed))
    bar = tqdm(total=len(runs), initial=len(records), desc="runs", unit="run", dynamic_ncols=True)

    def finished(record):
        record["regime_params"] = dataclasses.asdict(regimes[record["regime"]])
        record["data_seed"] = data_seed
        (runs_dir / f"{record['name']}.json").write_text(json.dumps(record, indent=1) + "\n")
        records[record["name"]] = record
        bar.update(1)
        bar.write(f"[{len(records)}/{len(runs)}] {_summary_line(record)}")

    start = time.perf_counter()
    if workers <= 1:
        for run in pending:
            finished(_worker(run, regimes, data_seed))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, run, regimes, data_seed) for run in pending]
            for future in as_completed(futures):
                finished(future.result())
    bar.close()
    print(f"{len(pending)} run(s) trained in {time.perf_counter() - start:.0f} s", flush=True)
    return [records[r.name] for r in runs]


# --------------------------------------------------------------------------------------
# the plan: which runs make the tables
# --------------------------------------------------------------------------------------

#: the memory momentum of train.json (runs with this beta are the plain nvum_epoch runs).
DEFAULT_BETA = 0.9


def _split_list(value, cast=str) -> list:
    """A command-line list: ``"a,b"``, ``("a", "b")`` (fire parses ``a,b`` to a tuple) or one value."""
    if value is None:
        return []
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    return [cast(v) for v in items]


def _split_noise(value) -> list[str]:
    """Noise models from the command line; ``bomd:0.2,0.2`` keeps its comma (a part that is a bare number belongs to the previous model)."""
    out: list[str] = []
    for part in _split_list(value):
        if out and out[-1].startswith("bomd:") and out[-1].count(",") == 0 and _is_number(part):
            out[-1] += f",{part}"
        else:
            out.append(part)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def build_plan(noise: Sequence[str], methods: Sequence[str], seeds: int = 3, regime: str = "memorisation", short_regime: str | None = "short", stress_seeds: int = 1, short_seeds: int = 1, ablation_seeds: int = 1, betas: Sequence[float] = (0.1, 0.5, 0.9), beta_seeds: int = 1, stress_regime: str | None = None) -> dict[str, list[Run]]:
    """The runs of each part of the benchmark (a run shared by two parts is listed in both).

    Parts:
        ``main``: the first noise model, ``regime``, every method, ``seeds`` seeds, with curves.
        ``stress``: the other noise models, ``stress_regime`` (default: ``short_regime``, else
        ``regime``), every method, ``stress_seeds`` seeds, with curves.
        ``short``: the first noise model, ``short_regime``, every method, ``short_seeds`` seeds, with curves.
        ``ablation``: the first noise model, ``regime``, the methods of :data:`ABLATION_ROWS`,
        ``ablation_seeds`` seeds (runs of ``main`` reused).
        ``beta``: the first noise model, ``regime``, ``nvum_epoch`` with each memory momentum,
        ``beta_seeds`` seeds (beta = 0.9 is the ``main`` run).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {sorted(METHODS)}")
    if not noise:
        raise ValueError("give at least one noise model (e.g. --noise report)")
    for b in betas:
        if not 0.0 <= b < 1.0:
            raise ValueError(f"memory momentum beta must be in [0, 1), got {b}")
    head = noise[0]
    plan = {"main": [Run(head, regime, m, s) for m in methods for s in range(seeds)]}
    stress_regime = stress_regime or short_regime or regime
    plan["stress"] = [Run(n, stress_regime, m, s) for n in noise[1:] for m in methods for s in range(stress_seeds)]
    plan["short"] = [Run(head, short_regime, m, s) for m in methods for s in range(short_seeds)] if short_regime else []
    main = {r.name: r for r in plan["main"]}

    def reuse(run: Run) -> Run:
        return main.get(run.name, dataclasses.replace(run, curve=False))

    plan["ablation"] = [reuse(Run(head, regime, m, s)) for m in ABLATION_ROWS.values() for s in range(ablation_seeds)]
    plan["beta"] = [reuse(Run(head, regime, "nvum_epoch", s, None if math.isclose(b, DEFAULT_BETA) else float(b))) for b in betas for s in range(beta_seeds)]
    return plan


def unique_runs(plan: dict[str, list[Run]]) -> list[Run]:
    """Every run of the plan once, curve runs first (they take longest)."""
    seen: dict[str, Run] = {}
    for runs in plan.values():
        for run in runs:
            seen.setdefault(run.name, run)
    return sorted(seen.values(), key=lambda r: not r.curve)


# --------------------------------------------------------------------------------------
# tables and figures
# --------------------------------------------------------------------------------------

SPLITS = ("test", "test_shifted")


def run_metrics(record: dict) -> dict:
    """AUC points (x100) of one run: selected (noisy-validation best) and last epoch per split,
    the peak over epochs and ``drop`` = peak - last (curve runs only), and the selected epoch."""
    out = {"selected_epoch": record["best"]["epoch"], "val_selected": 100 * record["best"]["val"], "val_last": 100 * record["last"]["val"]}
    for split in SPLITS:
        out[f"selected_{split}"] = 100 * record["best"]["test"][split]
        out[f"last_{split}"] = 100 * record["last"]["test"][split]
        curve = [row["test"][split] for row in record["history"] if "test" in row]
        if len(curve) == len(record["history"]):
            out[f"peak_{split}"] = 100 * max(curve)
            out[f"drop_{split}"] = out[f"peak_{split}"] - out[f"last_{split}"]
    return out


def _mean_std(values) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _pm(values, digits: int = 1) -> str:
    mean, std = _mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _groups(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    """Runs grouped by everything but the seed, in first-seen order."""
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault((r.noise, r.regime, r.method, r.beta), []).append(r)
    return out


def results_table(runs: Sequence[Run], records: dict[str, dict]) -> list[dict]:
    """One row per (noise, regime, method): mean ± std over seeds of the AUC points."""
    rows = []
    for (noise, regime, method, beta), group in _groups(runs).items():
        metrics = [run_metrics(records[r.name]) for r in group]
        row = {"noise": noise, "regime": regime, "method": method, "seeds": len(group)}
        for key in ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted", "drop_test", "drop_test_shifted", "selected_epoch", "val_selected"):
            row[key] = [m.get(key, float("nan")) for m in metrics]
        rows.append(row)
    return rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main_markdown(rows: list[dict]) -> str:
    header = ["noise", "method", "seeds", "selected: test", "selected: shifted", "last: test", "last: shifted", "drop: test", "drop: shifted", "selected epoch"]
    body = [
        [r["noise"], r["method"], r["seeds"], _pm(r["selected_test"]), _pm(r["selected_test_shifted"]), _pm(r["last_test"]), _pm(r["last_test_shifted"]), _pm(r["drop_test"]), _pm(r["drop_test_shifted"]), _pm(r["selected_epoch"], 0)]
        for r in rows
    ]
    return _md_table(header, body)


def ablation_markdown(runs: Sequence[Run], records: dict[str, dict]) -> str:
    by_method = _groups(runs)
    body = []
    for label, method in ABLATION_ROWS.items():
        group = next((g for (n, rg, m, b), g in by_method.items() if m == method), None)
        if not group:
            continue
        metrics = [run_metrics(records[r.name]) for r in group]
        body.append([label, f"`{method}`", len(group)] + [_pm([m[k] for m in metrics]) for k in ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted")])
    return _md_table(["row", "method", "seeds", "selected: test", "selected: shifted", "last: test", "last: shifted"], body)


def beta_markdown(runs: Sequence[Run], records: dict[str, dict]) -> str:
    body = []
    for (n, rg, m, beta), group in sorted(_groups(runs).items(), key=lambda kv: kv[0][3] if kv[0][3] is not None else DEFAULT_BETA):
        metrics = [run_metrics(records[r.name]) for r in group]
        b = beta if beta is not None else DEFAULT_BETA
        body.append([f"{b:g}", len(group)] + [_pm([x[k] for x in metrics]) for k in ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted")])
    return _md_table(["beta", "seeds", "selected: test", "selected: shifted", "last: test", "last: shifted"], body)


def curve_figure(runs: Sequence[Run], records: dict[str, dict], path, title: str = "") -> Path:
    """AUC per epoch of every method (mean over seeds, band: min-max): noisy validation, clean test, clean shifted test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [("val", "noisy validation"), ("test", "clean test (in-distribution)"), ("test_shifted", "clean test (shifted)")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=90, sharex=True)
    colours = plt.get_cmap("tab10").colors
    for i, ((noise, regime, method, beta), group) in enumerate(_groups(runs).items()):
        for ax, (key, name) in zip(axes, panels):
            curves = np.array([[100 * (row[key] if key == "val" else row["test"][key]) for row in records[r.name]["history"]] for r in group])
            epochs = np.arange(1, curves.shape[1] + 1)
            ax.plot(epochs, curves.mean(axis=0), color=colours[i % 10], lw=1.5, label=method)
            if len(group) > 1:
                ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=colours[i % 10], alpha=0.15, lw=0)
            ax.set_title(name, fontsize=10)
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean AUC over 13 diseases (points)")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def gaps_markdown(runs: Sequence[Run], records: dict[str, dict], baseline: str = "bce") -> str:
    """Difference of each method to ``baseline`` (AUC points, mean ± std over the paired seeds)."""
    groups = _groups(runs)
    base = next((g for (n, rg, m, b), g in groups.items() if m == baseline), None)
    if base is None:
        return ""
    base_metrics = {r.seed: run_metrics(records[r.name]) for r in base}
    body = []
    for (n, rg, method, b), group in groups.items():
        if method == baseline:
            continue
        metrics = {r.seed: run_metrics(records[r.name]) for r in group}
        seeds = sorted(set(metrics) & set(base_metrics))
        cells = [_pm([metrics[s][k] - base_metrics[s][k] for s in seeds]) for k in ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted")]
        body.append([method, len(seeds)] + cells)
    return _md_table(["method", "paired seeds", f"selected: test - {baseline}", "selected: shifted", "last: test", "last: shifted"], body)


def _regime_text(regimes: dict[str, Regime], names) -> str:
    parts = []
    for name in names:
        r = regimes[name]
        parts.append(f"`{name}`: {r.num_training} training / {r.num_validation} validation images (noisy), {r.num_test} + {r.num_test} clean test images (in-distribution + shifted), {r.max_epochs} epochs")
    return "; ".join(parts)


def write_outputs(plan: dict[str, list[Run]], records: dict[str, dict], output, regimes: dict[str, Regime], command: str = "", wall_seconds: float | None = None) -> Path:
    """Write ``results.md``, ``results.csv`` (one row per run) and the curve figures; returns ``results.md``."""
    import pandas as pd

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    used = unique_runs(plan)
    rows = []
    for run in used:
        rec = records[run.name]
        rows.append({**dataclasses.asdict(run), "name": run.name, **run_metrics(rec), "seconds": rec["seconds"], "cpu_seconds": rec.get("cpu_seconds")})
    pd.DataFrame(rows).to_csv(output / "results.csv", index=False)

    text = ["# Synthetic noisy-label benchmark", ""]
    if command:
        text += ["Command:", "", f"    {command}", ""]
    regimes_used = sorted({r.regime for r in used}, key=list(regimes).index)
    text += [
        f"Regimes: {_regime_text(regimes, regimes_used)}.",
        "AUC is the mean over the 13 diseases (No Finding excluded), in points (x100), mean ± std over seeds (one value: one seed).",
        "`selected`: the epoch with the best mean AUC on the *noisy* validation split (the checkpoint the bundle keeps); `last`: the final epoch;",
        "`drop`: best clean-test AUC over the epochs minus the last epoch's (the memorisation signature; curve runs only).",
        f"{len(used)} runs; {sum(records[r.name].get('cpu_seconds', float('nan')) for r in used) / 60:.1f} min of CPU time (one thread per run), {sum(records[r.name]['seconds'] for r in used) / 60:.1f} min of run wall time"
        + (f", {wall_seconds / 60:.1f} min wall for the command" if wall_seconds else "") + ".",
        "",
    ]
    figures = []
    for part, title in (("main", "Main table"), ("stress", "Other noise models (stress rows)"), ("short", "Short regime")):
        runs = plan.get(part) or []
        if not runs:
            continue
        regime = runs[0].regime
        text += [f"## {title} ({regime} regime)", "", main_markdown(results_table(runs, records)), ""]
        if part in ("main", "short"):
            gaps = gaps_markdown(runs, records)
            if gaps:
                text += ["Difference to plain BCE, paired by seed (points):", "", gaps, ""]
        for (noise, reg), group in _by_noise_regime(runs).items():
            if all(r.curve for r in group):
                name = f"curve_{_noise_slug(noise)}_{reg}.png"
                curve_figure(group, records, output / name, title=f"{noise} noise, {reg} regime")
                figures.append(name)
                text += [f"![AUC per epoch, {noise} noise, {reg} regime]({name})", ""]
    if plan.get("ablation"):
        text += ["## Ablation: where the class prior goes (paper, Fig. 2 left)", "", ablation_markdown(plan["ablation"], records), ""]
    if plan.get("beta"):
        text += ["## Memory momentum beta (paper, Fig. 2 right; `nvum_epoch`)", "", beta_markdown(plan["beta"], records), ""]
    path = output / "results.md"
    path.write_text("\n".join(text))
    return path


def _by_noise_regime(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault((r.noise, r.regime), []).append(r)
    return out


# --------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------

DEFAULT_METHODS = "bce,logit_adjusted_bce,bce_ema,nvum_epoch,nvum_iteration"


def noise_benchmark(
    noise="report,symmetric:0.2,symmetric:0.4",
    methods=DEFAULT_METHODS,
    seeds: int = 3,
    output: str = "results/noise_benchmark",
    quick: bool = False,
    stress_seeds: int = 1,
    short_seeds: int = 1,
    ablation_seeds: int = 1,
    betas="0.1,0.5,0.9",
    beta_seeds: int = 1,
    short: bool = True,
    workers: int = 2,
    data_seed: int = 0,
    resume: bool = False,
) -> Path:
    """Train and test every method on the synthetic set; write tables and figures to ``output``.

    See the module docstring for what a run is and README "Results" for the default matrix.
    ``quick`` runs the same matrix on the tiny ``quick`` regime with one seed, the first noise
    model only, no short regime and two betas: a check of the whole pipeline in minutes.
    """
    from .utils import as_bool

    start = time.perf_counter()
    quick, short, resume = as_bool(quick, "quick"), as_bool(short, "short"), as_bool(resume, "resume")
    noise_list, method_list = _split_noise(noise), _split_list(methods)
    beta_list = _split_list(betas, float)
    if quick:
        plan = build_plan(noise_list[:1], method_list, seeds=1, regime="quick", short_regime=None, ablation_seeds=1, betas=[beta_list[0], DEFAULT_BETA] if beta_list else [], beta_seeds=1)
    else:
        plan = build_plan(noise_list, method_list, int(seeds), "memorisation", "short" if short else None, int(stress_seeds), int(short_seeds), int(ablation_seeds), beta_list, int(beta_seeds))
    runs = unique_runs(plan)
    counts = ", ".join(f"{part} {len(r)}" for part, r in plan.items() if r)
    print(f"noise benchmark: {len(runs)} runs ({counts}; shared runs counted once in the total), {workers} worker(s)", flush=True)
    records = {r["name"]: r for r in run_matrix(runs, output, REGIMES, workers=int(workers), data_seed=int(data_seed), resume=resume)}
    if Path(sys.argv[0]).name == "cli.py" and "noise_benchmark" in sys.argv:
        command = "python -m custom.cli " + shlex.join(sys.argv[1:])
    else:
        command = "python -m custom.cli noise_benchmark " + " ".join(_command_args(dict(noise=noise, methods=methods, seeds=seeds, output=output, quick=quick)))
    path = write_outputs(plan, records, output, REGIMES, command=command, wall_seconds=time.perf_counter() - start)
    print(path.read_text())
    print(f"written to {Path(output)} ({(time.perf_counter() - start) / 60:.1f} min)")
    return path


#: the AUC columns of ``results.csv`` that a rerun must reproduce (points).
COMPARED = ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted", "drop_test", "drop_test_shifted", "val_selected")


def compare_results(first, second, tolerance: float = 0.5) -> float:
    """Largest difference (AUC points) between two benchmark outputs of the same runs.

    Args:
        first, second: output folders (or their ``results.csv``) of two runs of the command.
        tolerance: allowed difference in AUC points.

    Returns:
        the largest absolute difference over every run and every column of :data:`COMPARED`.

    Raises:
        ValueError: the two outputs hold different runs, or a difference exceeds ``tolerance``.
    """
    import pandas as pd

    tables = []
    for where in (first, second):
        path = Path(where)
        path = path / "results.csv" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no benchmark results at {path}: run `python -m custom.cli noise_benchmark --output {path.parent}` first")
        tables.append(pd.read_csv(path).set_index("name"))
    a, b = tables
    if set(a.index) != set(b.index):
        raise ValueError(f"{first} and {second} hold different runs: only in the first {sorted(set(a.index) - set(b.index))[:5]}, only in the second {sorted(set(b.index) - set(a.index))[:5]}")
    b = b.loc[a.index]
    columns = [c for c in COMPARED if c in a.columns]
    diff = (a[columns] - b[columns]).abs()
    worst = float(np.nanmax(diff.to_numpy())) if diff.size else 0.0
    both_nan = a[columns].isna() == b[columns].isna()
    if not both_nan.all().all():
        raise ValueError("a value is missing in one output only: " + ", ".join(f"{r}/{c}" for r, c in zip(*np.where(~both_nan.to_numpy()))))
    print(f"{len(a)} runs, {len(columns)} AUC columns: largest difference {worst:.4f} points (tolerance {tolerance})")
    for column in columns:
        print(f"  {column:24s} max |diff| {np.nanmax(diff[column].to_numpy()) if diff[column].notna().any() else 0.0:.4f}")
    if worst > tolerance:
        run, column = diff.stack().idxmax()
        raise ValueError(f"run {run}: {column} differs by {worst:.3f} AUC points (> {tolerance})")
    return worst


def _command_args(locals_: dict) -> list[str]:
    out = []
    for k, v in locals_.items():
        if isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        if k == "quick":
            if v:
                out.append("--quick")
            continue
        out.append(f"--{k} {v}")
    return out
