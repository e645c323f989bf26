"""Synthetic noisy-label benchmark: NVUM against its baselines, trained through the bundle.

``python -m custom.cli noise_benchmark`` trains every method of a run matrix on the synthetic
chest X-ray set (:mod:`custom.data.synthetic`) and records, epoch by epoch, the mean AUC over the
diseases on the *noisy* validation split (model selection) and on the two *clean* test splits
(``test``: in-distribution, ``test_shifted``: PadChest-like prevalence and image style), and the
share of the wrong training labels the network has fitted (:mod:`.fitting`).

Every run is the bundle's own training job: ``bundle/configs/train.json`` is read with MONAI's
``ConfigParser``, the method is a handful of overrides of its ids (:data:`METHODS`), and the
trainer, evaluator, loss, memory, memory updater and EMA teacher are the ones the config builds.
The benchmark only changes what is not part of the method: the data and the recipe (the regime:
sizes, epochs, learning-rate schedule, and a network that sees 32 px patterns), MLflow
and the per-epoch resume checkpoint off, the per-iteration progress bar and per-epoch lines off
(the best ``model.pt`` is still saved, in a temporary folder), and one
handler added that evaluates the network the config validates (the EMA teacher where there is
one) on the clean test splits and the training images (:class:`CleanTestAUC`).

Model selection uses the noisy validation labels only: "best" is the epoch of the best noisy
validation mean AUC (the checkpoint the bundle saves as ``model.pt``); "last" is the final epoch;
``drop`` = selected - last, both on the whole test splits, measures memorisation (the curve, on
part of each split every few epochs, draws the figures). Nothing is ever chosen on the clean test labels.

The default plan trains the main methods on two draws of the synthetic set (``data_seeds`` 0 and 1,
under an hour); the head-to-head rule (:mod:`.targets`, fixed before their run) picks the bundle's
default recipe on two new draws (:data:`NEW_DRAWS`), run into the same folder by
``--data_seeds 0,1,2,3 --resume true`` (:data:`NEW_DRAWS_COMMAND`: the finished draws are read, not
trained). ``--extended`` adds the further baselines, the stress rows, the update order, the
ablation and the beta sweep.

Runs are independent and deterministic (``monai.utils.set_determinism(seed)``, one CPU thread
per run): they go to ``workers`` processes, each run writes ``runs/<name>.json`` in the output
folder, and the tables and figures are built from those files.
"""

from __future__ import annotations

import time
from pathlib import Path

from ...flags import as_bool
from ...data.synthetic import split_noise_specs
from .recorder import CleanTestAUC
from .compare import COMPARED, compare_results
from .methods import (
    ABLATION_ROWS,
    CLEAN_METHODS,
    DEFAULT_BETA,
    DEFAULT_DATA_SEEDS,
    DEFAULT_METHODS,
    EXTENDED_METHODS,
    METHODS,
    NEW_DRAWS,
    NVUM_FAMILY,
    NETWORKS,
    REGIMES,
    STRESS_NOISE,
    Regime,
    Run,
    build_plan,
    dataset_params,
    split_list,
    unique_runs,
)
from .report import curve_figure, write_outputs
from .runner import run_matrix, train_run
from .tables import (
    common_diseases,
    gaps_markdown,
    kept_diseases,
    main_markdown,
    paired_gaps,
    results_table,
    run_metrics,
    scope_metrics,
)
from .targets import (
    HEAD_TO_HEAD_RULE,
    NEW_DRAWS_COMMAND,
    PAPER_FORM,
    RULE,
    TEACHER_FORM,
    choose_default,
    choose_default_head_to_head,
    default_recipe,
    evaluate_targets,
    head_to_head_markdown,
)


def noise_benchmark(noise: str = "report", methods=DEFAULT_METHODS, seeds: int = 5,
                    output: str = "results/noise_benchmark", quick: bool = False, extended: bool = False,
                    data_seeds=DEFAULT_DATA_SEEDS, clean_seeds: int = 2, more_seeds: int = 3,
                    stress_noise=STRESS_NOISE, stress_seeds: int = 1, ablation_seeds: int = 1, order_seeds: int = 3,
                    betas="0.5,0.9", beta_seeds: int = 1, gpu="auto", gpu_seeds: int = 3, workers: int = 2,
                    resume: bool = False, command_line: str | None = None) -> Path:
    """Train and test every method on the synthetic set; write tables and figures to ``output``.

    Args:
        noise: the headline noise model (``report``: report-mining noise).
        methods: the methods of the main table (see :data:`METHODS`).
        seeds: training seeds of every main-table method, on each draw.
        output: the output folder (``results.md``, ``results.csv``, ``runs/``, figures).
        quick: the main table and the clean rows on the tiny ``quick`` regime, one seed per draw,
            nothing else: a check of the whole pipeline in minutes.
        extended: add, on the first draw, the further baselines (:data:`EXTENDED_METHODS`,
            ``more_seeds`` seeds), the stress rows, the memory update order, the ablation and the
            beta sweep (their ``*_seeds``; 0 leaves a part out).
        data_seeds: the draws of the synthetic set (generator seeds) of the main table; the first
            one also serves the clean rows and the ``--extended`` parts. ``0,1,2,3`` with ``resume``
            into the default plan's output trains the head-to-head rule's new draws only
            (:data:`NEW_DRAWS_COMMAND`).
        clean_seeds: seeds of the clean-label rows (BCE and NVUM on ``noise none``).
        stress_noise: the stress rows' noise models (BCE, NVUM, NVUM without the prior).
        betas: memory momentum values of the beta sweep.
        gpu: ``auto`` adds the DenseNet121 matrix (``gpu`` regime) when CUDA is available;
            ``true`` requires it, ``false`` leaves it out.
        gpu_seeds: seeds of the GPU matrix.
        workers: processes, one thread each (one per CPU core).
        resume: reuse finished runs of an interrupted command (same settings only).
        command_line: the command as typed, for ``results.md`` (default: rebuilt from the arguments).

    See the module docstring for what a run is and bundle/docs/results.md for the default plan.
    """
    start = time.perf_counter()
    quick, resume, extended = as_bool(quick, "quick"), as_bool(resume, "resume"), as_bool(extended, "extended")
    (head,), method_list = split_noise_specs(noise)[:1], split_list(methods)
    draws = split_list(data_seeds, int)
    if quick:
        plan = build_plan(head, method_list, seeds=1, regime="quick", clean_seeds=1, data_seeds=draws)
    else:
        more = {}
        if extended:
            more = dict(
                more_methods=[m for m in EXTENDED_METHODS if m not in method_list],
                more_seeds=int(more_seeds),
                stress_noise=split_noise_specs(stress_noise) if stress_noise else (),
                stress_seeds=int(stress_seeds),
                ablation_seeds=int(ablation_seeds),
                order_seeds=int(order_seeds),
                betas=split_list(betas, float),
                beta_seeds=int(beta_seeds),
            )
        plan = build_plan(head, method_list, int(seeds), "cpu", int(clean_seeds), data_seeds=draws, **more)
        plan["gpu"] = _gpu_part(head, method_list, gpu, int(gpu_seeds), draws[0])
    runs = unique_runs(plan)
    counts = ", ".join(f"{part} {len(r)}" for part, r in plan.items() if r)
    print(
        f"noise benchmark: {len(runs)} runs ({counts}; shared runs counted once in the total), {workers} worker(s)",
        flush=True,
    )
    before = _record_stamps(runs, output)
    records = {r["name"]: r for r in run_matrix(runs, output, REGIMES, workers=int(workers), resume=resume)}
    trained = sum(1 for name, stamp in _record_stamps(runs, output).items() if stamp != before.get(name))
    command = command_line or "python -m custom.cli noise_benchmark " + " ".join(
        _command_args(dict(noise=noise, methods=methods, seeds=seeds, data_seeds=data_seeds, output=output,
                           quick=quick, extended=extended))
    )
    path = write_outputs(plan, records, output, REGIMES, command=command, wall_seconds=time.perf_counter() - start,
                         trained=trained)
    print(path.read_text())
    print(f"written to {Path(output)} ({(time.perf_counter() - start) / 60:.1f} min)")
    return path


def _record_stamps(runs, output) -> dict[str, tuple]:
    """(modification time, size) of each run's record file that exists: a run trained by the command rewrote it."""
    out = {}
    for run in runs:
        path = Path(output) / "runs" / f"{run.name}.json"
        if path.is_file():
            stat = path.stat()
            out[run.name] = (stat.st_mtime_ns, stat.st_size)
    return out


def _gpu_part(noise: str, methods, gpu, seeds: int, data_seed: int = 0) -> list[Run]:
    """The DenseNet121 runs of the ``gpu`` regime, when asked for and CUDA is available."""
    import torch

    from ...flags import truth_word

    wanted = None if str(gpu).strip().lower() == "auto" else truth_word(gpu)
    if wanted is False or seeds < 1:
        return []
    if not torch.cuda.is_available():
        if wanted is True:
            raise RuntimeError(
                "--gpu true: the GPU matrix (DenseNet121 at 64 px) needs CUDA, which is not available here"
            )
        print("no CUDA device: the GPU matrix (DenseNet121 at 64 px) is left out", flush=True)
        return []
    return [Run(noise, "gpu", m, s, data_seed=data_seed) for m in methods for s in range(seeds)]


def _command_args(locals_: dict) -> list[str]:
    out = []
    for k, v in locals_.items():
        if isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        if k in ("quick", "extended"):
            if v:
                out.append(f"--{k}")
            continue
        out.append(f"--{k} {v}")
    return out
