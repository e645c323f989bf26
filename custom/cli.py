"""Command-line jobs that are not bundle workflows: ``python -m custom.cli <command> [--flags]``.

Commands:
    benchmark_step   training-step throughput of NVUM (both schedules) against plain BCE.
    benchmark_loop   the bundle's training loop against a hand-written PyTorch loop.
    benchmark_pipeline  the cached data pipeline against decoding and resizing every epoch.
    benchmark_memory    NVUM memory bytes and update time for several N and batch sizes.
    synthetic        generate (or find) the synthetic data set and print its data-list path.
"""

from __future__ import annotations


def synthetic(root: str | None = None, **params):
    """Generate the synthetic set if needed (same parameters as ``custom.synthetic.generate_synthetic``); print the data-list path."""
    from .synthetic import ensure_synthetic

    print(ensure_synthetic(root, **params))


def benchmark_step(**kwargs):
    """NVUM training-step throughput over plain BCE (see ``custom.benchmarks.step``)."""
    from .benchmarks import step

    step(**kwargs)


def main():
    import fire

    fire.Fire({"benchmark_step": benchmark_step, "synthetic": synthetic, "benchmark_loop": benchmark_loop, "benchmark_pipeline": benchmark_pipeline, "benchmark_memory": benchmark_memory})


def benchmark_loop(**kwargs):
    """The bundle's training loop over a hand-written loop (see ``custom.benchmarks.loop``)."""
    from .benchmarks import loop

    loop(**kwargs)


def benchmark_pipeline(**kwargs):
    """Cached data pipeline over per-epoch decoding (see ``custom.benchmarks.pipeline``)."""
    from .benchmarks import pipeline

    pipeline(**kwargs)


def benchmark_memory(**kwargs):
    """NVUM memory footprint and update time (see ``custom.benchmarks.memory``)."""
    from .benchmarks import memory

    memory(**kwargs)


if __name__ == "__main__":
    main()
