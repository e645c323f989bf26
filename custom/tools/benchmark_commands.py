"""The benchmark commands of ``python -m custom.cli`` (``benchmark_*``, ``gpu_report``, ``noise_benchmark``,
``noise_benchmark_compare``, ``audit_benchmark``), registered on the one registry (:data:`custom.tools.commands.cli`);
the other commands are in :mod:`custom.tools.cli`."""

from __future__ import annotations

import sys

from .commands import TRAIN_OVERRIDES, cli


@cli.command(options_from="custom.tools.benchmarks.step:step")
def benchmark_step(**options):
    """Training-step throughput of NVUM (both memory schedules) against plain BCE, side by side.

    Args:
        steps: steps per measurement.

    Example:
        python -m custom.cli benchmark_step --steps 10 --repeats 3
    """
    from .benchmarks import step

    step(**options)


@cli.command(options_from="custom.tools.benchmarks.loop:loop")
def benchmark_loop(**options):
    """The bundle's training loop against a minimal hand-written PyTorch loop (same network, batches and loss).

    Args:
        steps: steps per epoch.
        epochs: epochs per measurement.

    Example:
        python -m custom.cli benchmark_loop --steps 5 --repeats 3
    """
    from .benchmarks import loop

    loop(**options)


@cli.command(options_from="custom.tools.benchmarks.pipeline:pipeline")
def benchmark_pipeline(**options):
    """The cached data pipeline of train.json against decoding and resizing every image every epoch.

    Args:
        num_images: synthetic PNGs generated for it (once, into the data cache).
        source_size: their height and width.
        image_size: the training input size they are resized to.
        batch_size: images per batch.
        num_workers: data loader worker processes.
        repeats: measurements per pipeline (the median is reported).
        epochs: epochs the one-off cache build is folded into.
        root: folder of the generated images (default: the data cache).
        output: JSON file of the results (empty: none).

    Example:
        python -m custom.cli benchmark_pipeline --num_images 200 --repeats 2
    """
    from .benchmarks import pipeline

    pipeline(**options)


@cli.command(options_from="custom.tools.benchmarks.footprint:memory")
def benchmark_memory(**options):
    """NVUM memory bytes and update time for several numbers of training images and batch sizes.

    Args:
        sizes: numbers of training images N (comma-separated).
        batch_sizes: batch sizes (comma-separated).
        num_classes: classes C.
        repeats: updates timed per (N, batch size).
        threads: intra-op threads.
        seed: seed of the memory and the batches.
        output: JSON file of the results (empty: none).

    Example:
        python -m custom.cli benchmark_memory --sizes 1000,100000 --batch_sizes 64,256
    """
    from .benchmarks import memory

    memory(**options)


@cli.command(options_from="custom.tools.benchmarks.ood_gate:ood_gate")
def benchmark_ood_gate(**options):
    """Inference time with the out-of-distribution gate on and off, alternating in one process, and the ratio.

    Args:
        bundle_root: a trained bundle (its models/model.pt and model.ood.npz).
        input_path: a folder of images; default: test images of the data list the bundle trains on.
        num_images: how many test images, without input_path.
        rounds: timed runs with and without the gate.
        image_size: the training image size, when not train.json's.
        output: JSON file of the results (empty: none).

    Example:
        python -m custom.cli benchmark_ood_gate --bundle_root bundle --num_images 500 --rounds 3
    """
    from .benchmarks import ood_gate

    ood_gate(**options)


@cli.command(options_from="custom.tools.audit.benchmark:audit_benchmark",
             overrides=TRAIN_OVERRIDES + "; they apply to every training run of the benchmark")
def audit_benchmark(**options):
    """Train on the synthetic set at each noise level, audit the labels, and score the rankings (30+ min).

    A finished training run with the same settings is reused (bundle/docs/audit.md).

    Args:
        noise: noise settings, comma-separated (symmetric:<rate>, report, bomd, none).
        output_dir: folder of the runs, the tables and the figure.
        figure: where the score figure is copied (empty: nowhere).
        retrain: train again even when a finished run exists.
        model_weight: weight of the final network's logits in the audit score (0: memory only).
        ks: cut-offs of precision at k (comma-separated).

    Example:
        python -m custom.cli audit_benchmark --noise symmetric:0.4 --max_epochs 15 --lr_milestones "[10, 14]"
    """
    from .audit import audit_benchmark as run

    run(**options)


@cli.command(options_from="custom.tools.noise_benchmark:noise_benchmark", hidden=("command_line",))
def noise_benchmark(**options):
    """Train and test NVUM and its baselines on synthetic noisy labels; write the tables and figures (about an hour).

    bundle/docs/results.md explains the matrix of runs, the tables and the targets.

    Args:
        noise: the headline noise model (report: report-mining noise).
        methods: methods of the main table, comma-separated.
        seeds: training seeds of every main-table method, on each draw of the data.
        output: folder of the results.
        quick: the main table and the clean rows on a tiny regime, one seed per draw: a pipeline check in minutes.
        extended: add the further baselines, stress rows, update order, ablation and beta sweep (first draw).
        data_seeds: the draws of the synthetic data (generator seeds) of the main table, comma-separated.
        clean_seeds: seeds of the clean-label rows (the ceiling).
        more_seeds: seeds of the further baselines (--extended).
        stress_noise: noise models of the stress rows, comma-separated (--extended).
        stress_seeds: seeds of the stress rows (--extended; 0 leaves them out).
        ablation_seeds: seeds of the ablation rows (--extended; 0 leaves them out).
        order_seeds: seeds of the memory-update-order comparison (--extended; 0 leaves it out).
        betas: memory momentums of the beta rows, comma-separated (--extended).
        beta_seeds: seeds of the beta rows (--extended; 0 leaves them out).
        gpu: auto adds the DenseNet121 matrix when CUDA is available; true requires it, false leaves it out.
        gpu_seeds: seeds of the GPU matrix.
        workers: processes, one thread each.
        resume: reuse the finished runs of an interrupted command.

    Example:
        python -m custom.cli noise_benchmark --quick
    """
    import shlex

    from .noise_benchmark import noise_benchmark as run

    run(**options, command_line="python -m custom.cli " + shlex.join(sys.argv[1:]))


@cli.command()
def noise_benchmark_compare(first: str, second: str, tolerance: float = 0.5):
    """Check that two runs of the noise benchmark agree within a tolerance; exit status 1 when not.

    Args:
        first: output folder (or results.csv) of one run of noise_benchmark.
        second: output folder (or results.csv) of the other run.
        tolerance: allowed difference in AUC points.

    Example:
        python -m custom.cli noise_benchmark_compare --first bundle/docs/noise_benchmark
            --second results/noise_benchmark_rerun
    """
    from .noise_benchmark import compare_results

    try:
        compare_results(first, second, tolerance)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"noise_benchmark_compare: {e}")


@cli.command(options_from="custom.tools.benchmarks.datapath:data_path")
def benchmark_data(**options):
    """Images/s per data-loading worker at 512 pixels from 1024-pixel originals, pre-resized PNGs and the store.

    Args:
        num_images: images of each source (synthetic, generated once into the data cache).
        source_size: side of the originals.
        image_size: the training input size.
        batch_size: images per batch.
        repeats: measurements per source (the median is reported).
        seed: seed of the images.
        root: folder of the three sources (default: the data cache).
        output: JSON file of the results (empty: none).

    Example:
        python -m custom.cli benchmark_data --num_images 64 --repeats 3
    """
    from .benchmarks.datapath import data_path

    data_path(**options)


@cli.command(options_from="custom.tools.benchmarks.gpu_report:gpu_report")
def gpu_report(**options):
    """Every speed figure of a GPU machine in one Markdown table, in a few minutes (bundle/docs/scaling.md).

    Args:
        dry_run: a tiny version of every row (on the CPU without a GPU), to check that the command runs.
        output: Markdown file of the table (empty: none).
        root: folder of the prepared store the loader rows read (default: the data cache).

    Example:
        python -m custom.cli gpu_report --output results/gpu_report.md
    """
    from .benchmarks.gpu_report import gpu_report as run

    run(**options)
