"""Training the runs of the noise benchmark: one run through train.json, the matrix over worker processes."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

from ..training import TRAIN_CONFIG, train_through_bundle
from .recorder import CleanTestAUC, preprocessed_test_sets, preprocessed_training_set
from .methods import REGIMES, Regime, Run, dataset_params


def train_run(run: Run, regimes: dict[str, Regime] | None = None, workdir=None, threads: int | None = 1,
              config_file=TRAIN_CONFIG) -> dict:
    """Train one run of the matrix through ``train.json`` (on its draw of the data, ``run.data_seed``)
    and return its record.

    Returns:
        a JSON-ready dict: the run's fields, the config overrides, ``history`` (per epoch:
        noisy validation AUC, losses and, for curve runs, clean-test AUC per split), ``best``
        (epoch chosen on noisy validation, its test AUCs), ``last``, ``fitted_reference`` (the
        wrong labels fitted by random scores and by a perfect clean ranking, :mod:`.fitting`) and
        ``seconds``.
    """
    import tempfile

    import torch
    from monai.data import get_track_meta, set_track_meta

    regime = (regimes or REGIMES)[run.regime]
    start, cpu_start = time.perf_counter(), time.process_time()
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    overrides = {
        "mlflow": False,
        "seed": int(run.seed),
        "device": regime.device,
        **{f"datalist#{k}": v for k, v in dataset_params(run.noise, regime, run.data_seed).items()},
        **run.overrides(regimes),
    }
    trackers = []

    def attach_clean_test(parser, trainer):
        datalist = parser.get_parsed_content("data")
        tracker = CleanTestAUC(
            network=parser.get_parsed_content("teacher").eval_network,
            evaluator=parser.get_parsed_content("validate#evaluator"),
            test_sets=preprocessed_test_sets(parser, datalist),
            classes=datalist.classes,
            every_epoch=run.curve,
            eval_every=regime.eval_every,
            curve_size=regime.curve_size,
            train_set=preprocessed_training_set(parser, datalist),
        )
        tracker.attach(trainer)
        trackers.append(tracker)

    tracked = get_track_meta()
    set_track_meta(False)  # plain tensors through the transforms: the benchmark needs no image metadata (1.4x faster)
    try:
        with tempfile.TemporaryDirectory(prefix="nvum-bench-") as tmp:
            train_through_bundle(overrides, bundle_root=workdir or tmp, quiet=True, resume_checkpoints=False,
                                 before_run=attach_clean_test, config_file=config_file)
    finally:
        set_track_meta(tracked)
        used_threads = torch.get_num_threads()
        torch.set_num_threads(threads_before)
    tracker = trackers[0]
    return {
        **dataclasses.asdict(run),
        "name": run.name,
        "overrides": overrides,
        "history": tracker.history,
        "best": tracker.best,
        "last": tracker.last,
        "left_out": tracker.left_out,
        "fitted_reference": tracker.fitted_reference(),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "threads": used_threads,
    }


def _worker(run: Run, regimes: dict) -> dict:
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return train_run(run, regimes, threads=1)


def _summary_line(record: dict) -> str:
    best, last = record["best"], record["last"]
    splits = list(last["test"])
    fmt = lambda d: " ".join(f"{s} {d['test'][s]:.4f}" for s in splits)  # noqa: E731
    fitted = f" | wrong labels fitted {last['fitted']['all']:.2f}" if "fitted" in last else ""
    return (
        f"{record['name']}: best (epoch {best['epoch']}, val {best['val']:.4f}) {fmt(best)} | last "
        f"{fmt(last)}{fitted} | "
        f"{record['seconds']:.0f} s"
    )


def run_matrix(runs: Sequence[Run], output, regimes: dict[str, Regime] | None = None, workers: int = 2,
               resume: bool = False) -> list[dict]:
    """Train every run (``workers`` processes, one thread each), writing ``runs/<name>.json``.

    With ``resume`` a run whose file exists with the same settings is read, not trained again.
    Prints one line per finished run (its result and time) under a progress bar over runs.
    """
    from tqdm import tqdm

    from ...data.synthetic import ensure_synthetic

    regimes = regimes or REGIMES
    runs_dir = Path(output) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    records, pending = {}, []
    for run in runs:
        path = runs_dir / f"{run.name}.json"
        if resume and path.is_file():
            record = json.loads(path.read_text())
            spec = json.loads(json.dumps(dataclasses.asdict(run)))
            if (
                {k: record.get(k) for k in spec} == spec
                and record.get("regime_params") == dataclasses.asdict(regimes[run.regime])
            ):
                records[run.name] = record
                continue
        pending.append(run)
    for noise, regime, data_seed in sorted(
        {(r.noise, r.regime, r.data_seed) for r in pending}
    ):  # generate the data once, before the workers start
        ensure_synthetic(None, progress=False, **dataset_params(noise, regimes[regime], data_seed))
    bar = tqdm(total=len(runs), initial=len(records), desc="runs", unit="run", dynamic_ncols=True)

    def finished(record):
        record["regime_params"] = dataclasses.asdict(regimes[record["regime"]])
        (runs_dir / f"{record['name']}.json").write_text(json.dumps(record, indent=1) + "\n")
        records[record["name"]] = record
        bar.update(1)
        bar.write(f"[{len(records)}/{len(runs)}] {_summary_line(record)}")

    start = time.perf_counter()
    if workers <= 1:
        for run in pending:
            finished(_worker(run, regimes))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, run, regimes) for run in pending]
            for future in as_completed(futures):
                finished(future.result())
    bar.close()
    print(f"{len(pending)} run(s) trained in {time.perf_counter() - start:.0f} s", flush=True)
    return [records[r.name] for r in runs]
