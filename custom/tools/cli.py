"""Command-line jobs that are not bundle workflows: ``python -m custom.cli <command> [--flags]``.

Commands:
    audit            rank the training labels of a checkpoint by how likely they are wrong (NVUM memory).
    audit_benchmark  train on the synthetic set at given noise levels and score the label rankings.
    benchmark_step   training-step throughput of NVUM (both schedules) against plain BCE.
    benchmark_loop   the bundle's training loop against a hand-written PyTorch loop.
    benchmark_pipeline  the cached data pipeline against decoding and resizing every epoch.
    benchmark_memory    NVUM memory bytes and update time for several N and batch sizes.
    synthetic        generate (or find) the synthetic data set and print its data-list path.
    build_datalist   build a data list of a real dataset (NIH, CheXpert, OpenI, PadChest, Google NIH test) from its metadata.
    check            pre-flight check of a training config, its data list and files before training.
    export           TorchScript model.ts and the deployable bundle zip from a checkpoint, checked offline.
    register         export, then log the bundle and the pyfunc model to MLflow and register it.
    noise_benchmark  NVUM against its baselines on synthetic noisy labels: tables and figures (bundle/docs/results.md).
    noise_benchmark_compare  check that a rerun of the noise benchmark reproduces its numbers.
"""

from __future__ import annotations

import sys


def synthetic(root: str | None = None, **params):
    """Generate the synthetic set if needed (same parameters as ``custom.tools.synthetic.generate_synthetic``); print the data-list path."""
    from .synthetic import ensure_synthetic

    print(ensure_synthetic(root, **params))


def check(config_file: str = "bundle/configs/train.json", **overrides) -> None:
    """Pre-flight check of a training config and its data (see :mod:`custom.tools.preflight`); exit status 1 on failure."""
    from .preflight import main

    main(config_file, **overrides)


def build_datalist(dataset: str, scheme: str, metadata: str, output: str, **options):
    """Build a data list of a real dataset from its metadata; prints and saves a summary (bundle/docs/real_datasets.md).

    Options: --split_dir, --seed, --val_fraction, --holdout, --match paper|exact, --strict, --uncertain zeros|ones,
    --views, --tsne_views, --dicom_views, --image_dirs, --image_prefix, --set_id (see custom.tools.datalists.build_datalist).
    """
    from .datalists import BuildError, build_datalist as build

    try:
        build(dataset, scheme, metadata, output, **options)
    except (BuildError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"build_datalist: {e}") from None


def benchmark_step(**kwargs):
    """NVUM training-step throughput over plain BCE (see ``custom.tools.benchmarks.step``)."""
    from .benchmarks import step

    step(**kwargs)


def benchmark_loop(**kwargs):
    """The bundle's training loop over a hand-written loop (see ``custom.tools.benchmarks.loop``)."""
    from .benchmarks import loop

    loop(**kwargs)


def benchmark_pipeline(**kwargs):
    """Cached data pipeline over per-epoch decoding (see ``custom.tools.benchmarks.pipeline``)."""
    from .benchmarks import pipeline

    pipeline(**kwargs)


def benchmark_memory(**kwargs):
    """NVUM memory footprint and update time (see ``custom.tools.benchmarks.memory``)."""
    from .benchmarks import memory

    memory(**kwargs)


def audit(checkpoint: str, datalist: str | None = None, output: str = "audit.csv", **kwargs):
    """Rank every (training image, class) label by how likely it is wrong; see ``custom.tools.audit.audit``."""
    from .audit import audit as run_audit

    run_audit(checkpoint, datalist, output, **kwargs)


def audit_benchmark(noise: str = "symmetric:0.2,symmetric:0.4,report", output_dir: str = "results/audit_benchmark", **kwargs):
    """Train at each synthetic noise level, audit, and score the rankings; see ``custom.tools.audit.audit_benchmark``."""
    from .audit import audit_benchmark as run

    run(noise, output_dir, **kwargs)


def export(checkpoint="bundle/models/model.pt", **kwargs):
    """``model.ts`` and the deployable zip from a checkpoint (see ``custom.tools.deploy.export_command``)."""
    from .deploy import export_command

    export_command(checkpoint, **kwargs)


def register(checkpoint="bundle/models/model.pt", **kwargs):
    """Export, log to MLflow and register a checkpoint (see ``custom.tools.deploy.register_command``)."""
    from .deploy import register_command

    register_command(checkpoint, **kwargs)


def noise_benchmark(**kwargs):
    """Train and test NVUM and its baselines on synthetic noisy labels (see :mod:`custom.tools.noise_benchmark`)."""
    import shlex

    from .noise_benchmark import noise_benchmark as run

    run(**kwargs, command_line="python -m custom.cli " + shlex.join(sys.argv[1:]))


def noise_benchmark_compare(first: str, second: str, tolerance: float = 0.5):
    """Check that two runs of the noise benchmark agree within ``tolerance`` AUC points."""
    from .noise_benchmark import compare_results

    try:
        compare_results(first, second, tolerance)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"noise_benchmark_compare: {e}")


def main():
    import fire

    # every public function of this module is a command
    commands = {name: f for name, f in globals().items() if callable(f) and getattr(f, "__module__", None) == __name__ and not name.startswith("_") and name != "main"}
    fire.Fire(commands)


if __name__ == "__main__":
    main()
