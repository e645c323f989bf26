"""Synthetic noisy-label benchmark (``python -m custom.cli noise_benchmark``): NVUM against its baselines, trained through the bundle.

``python -m custom.cli noise_benchmark`` trains every method of a run matrix on the synthetic
chest X-ray set (:mod:`custom.tools.synthetic`) and records, after every epoch, the mean AUC over the
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

from __future__ import annotations

import time
from pathlib import Path

from ..synthetic import split_noise_specs
from .clean_test import CleanTestAUC
from .compare import COMPARED, compare_results
from .methods import (ABLATION_ROWS, DEFAULT_BETA, DEFAULT_METHODS, METHODS, REGIMES, Regime, Run, build_plan,
                      dataset_params, split_list, unique_runs)
from .report import curve_figure, write_outputs
from .runner import run_matrix, train_run
from .tables import gaps_markdown, main_markdown, results_table, run_metrics


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
    command_line: str | None = None,
) -> Path:
    """Train and test every method on the synthetic set; write tables and figures to ``output``.

    See the module docstring for what a run is and bundle/docs/results.md for the default matrix.
    ``quick`` runs the same matrix on the tiny ``quick`` regime with one seed, the first noise
    model only, no short regime and two betas: a check of the whole pipeline in minutes.
    ``command_line`` is the command as typed, for ``results.md`` (default: rebuilt from the arguments).
    """
    from ...flags import as_bool

    start = time.perf_counter()
    quick, short, resume = as_bool(quick, "quick"), as_bool(short, "short"), as_bool(resume, "resume")
    noise_list, method_list = split_noise_specs(noise), split_list(methods)
    beta_list = split_list(betas, float)
    if quick:
        plan = build_plan(noise_list[:1], method_list, seeds=1, regime="quick", short_regime=None, ablation_seeds=1, betas=[beta_list[0], DEFAULT_BETA] if beta_list else [], beta_seeds=1)
    else:
        plan = build_plan(noise_list, method_list, int(seeds), "memorisation", "short" if short else None, int(stress_seeds), int(short_seeds), int(ablation_seeds), beta_list, int(beta_seeds))
    runs = unique_runs(plan)
    counts = ", ".join(f"{part} {len(r)}" for part, r in plan.items() if r)
    print(f"noise benchmark: {len(runs)} runs ({counts}; shared runs counted once in the total), {workers} worker(s)", flush=True)
    records = {r["name"]: r for r in run_matrix(runs, output, REGIMES, workers=int(workers), data_seed=int(data_seed), resume=resume)}
    command = command_line or "python -m custom.cli noise_benchmark " + " ".join(_command_args(dict(noise=noise, methods=methods, seeds=seeds, output=output, quick=quick)))
    path = write_outputs(plan, records, output, REGIMES, command=command, wall_seconds=time.perf_counter() - start)
    print(path.read_text())
    print(f"written to {Path(output)} ({(time.perf_counter() - start) / 60:.1f} min)")
    return path


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
