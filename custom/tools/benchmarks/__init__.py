"""Speed benchmarks of the bundle, each measured side by side in one run (``python -m custom.cli
benchmark_<name>``); not tests. Every benchmark prints a table and writes ``results/<name>.json``.

- :func:`step`: training-step throughput of NVUM (both memory schedules) over plain BCE.
- :func:`loop`: the bundle's training loop (``NVUMTrainer`` and its handlers) over a minimal
  hand-written PyTorch loop doing the same work (same network, optimiser, loss, batches).
- :func:`pipeline`: the bundle's cached data pipeline over decoding and resizing the PNGs anew
  in every epoch.
- :func:`data_path`: images/s per data-loading worker from originals, pre-resized PNGs and the prepared
  store.
- :func:`memory`: bytes of the NVUM memory and the time of its updates for several N and batch
  sizes.
- :func:`ood_gate`: inference time with the out-of-distribution gate over without it.

Timings on a shared machine are noisy: the compared variants run in turn, ``repeats`` times,
and medians are reported.
"""

from .datapath import data_path
from .footprint import memory
from .loop import loop
from .ood_gate import ood_gate
from .pipeline import pipeline
from .step import step
