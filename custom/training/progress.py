"""What a training run shows while it runs (loss averages, a progress bar, one line per epoch) and at
its end (every file it wrote)."""

from __future__ import annotations

import time
from pathlib import Path

from ignite.engine import Engine, Events

#: parts of the training step's output that are averaged, shown and logged.
LOSS_PARTS = ("loss", "bce", "reg")


class HandlerGroup:
    """Attaches handlers that are defined elsewhere in the config, in order, as one handler-list entry.

    MONAI's bundle property checks read every entry of ``train#handlers`` as a ``_target_`` object,
    so a handler that other parts of the recipe also use (the EMA teacher and the memory updater,
    which the checkpoint saves; the MLflow tracker, which validation, the test report and the
    registration log to) is defined once at the top level and attached through a group.
    """

    def __init__(self, handlers):
        self.handlers = list(handlers)

    def attach(self, engine: Engine) -> None:
        for handler in self.handlers:
            handler.attach(engine)


class LossAverages:
    """Epoch averages of the loss and its parts, as ``train_<key>`` in ``engine.state.metrics``.

    Args:
        keys: keys of the training step's output to average (``loss``, ``bce``, ``reg``).
    """

    def __init__(self, keys=LOSS_PARTS):
        self.keys = tuple(keys)

    def attach(self, engine: Engine) -> None:
        from ignite.metrics import Average

        for key in self.keys:
            Average(output_transform=lambda out, k=key: out[k].detach()).attach(engine, f"train_{key}")


class ProgressBar:
    """A tqdm progress bar over the iterations of each epoch, showing the loss and its parts.

    Shown on terminals only (``disable=None``), so that logs of batch jobs stay readable; the
    one-line :class:`EpochSummary` is printed either way.
    """

    def __init__(self, keys=LOSS_PARTS, persist: bool = False):
        from ignite.handlers import ProgressBar as IgniteProgressBar

        self.keys = tuple(keys)
        self._bar = IgniteProgressBar(persist=persist, disable=None)

    def _output(self, output: dict) -> dict:
        return {k: output[k].detach().item() for k in self.keys if k in output}

    def attach(self, engine: Engine) -> None:
        self._bar.attach(engine, output_transform=self._output)


class EpochSummary:
    """Prints one line per epoch: losses, validation metric, best so far, and time.

    Attach it to the trainer after the validation handler.

    Args:
        evaluator: the validation engine (its ``key_metric`` is reported).
        max_epochs: shown as ``epoch k/max``.
    """

    def __init__(self, evaluator: Engine | None = None, max_epochs: int | None = None):
        self.evaluator, self.max_epochs = evaluator, max_epochs
        self._start = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        metrics = engine.state.metrics
        parts = [f"epoch {engine.state.epoch}/{self.max_epochs or engine.state.max_epochs}"]
        parts += [f"{k} {metrics[k]:.4f}" for k in (f"train_{p}" for p in LOSS_PARTS) if k in metrics]
        ev = self.evaluator
        if ev is not None and getattr(ev.state, "key_metric_name", None):
            name = ev.state.key_metric_name
            value = ev.state.metrics.get(name)
            if value is not None:
                parts.append(f"{name} {value:.4f}")
            parts.append(f"best {ev.state.best_metric:.4f} (epoch {ev.state.best_metric_epoch})")
        if self._start is not None:
            parts.append(f"{time.perf_counter() - self._start:.1f}s")
        print(" | ".join(parts), flush=True)


class RunSummary:
    """The last lines of a run: every file it wrote, with its full path.

    Lists the best network ``model.pt`` and its run record ``model.json`` and the last resume
    checkpoint ``checkpoint_epoch=K.pt`` of ``ckpt_dir`` (when given), then what each step wrote:
    every step object with a ``written`` list of ``(what, path)`` pairs (:class:`custom.TestReport`:
    test tables and ROC figures; :class:`custom.ModelRegistrar`: ``model.ts``, the bundle zip, the
    MLflow model).

    Args:
        ckpt_dir: the run's checkpoint folder (``None``: list only what the steps wrote, e.g. for evaluation).
        steps: the steps of the run, in order.
    """

    def __init__(self, ckpt_dir=None, steps=()):
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir not in (None, "") else None
        self.steps = list(steps)

    def files(self) -> list[tuple[str, str]]:
        """``(what, path)`` of every file written, in the order they are printed."""
        out = []
        if self.ckpt_dir is not None:
            from .checkpoints import CHECKPOINT_PATTERN

            best = self.ckpt_dir / "model.pt"
            if best.is_file():
                out.append(("best network", str(best.resolve())))
                if best.with_suffix(".json").is_file():
                    out.append(("its run record", str(best.with_suffix(".json").resolve())))
            found = ((CHECKPOINT_PATTERN.search(p.name), p) for p in self.ckpt_dir.glob("checkpoint_epoch=*.pt"))
            epochs = sorted((int(m.group(1)), p) for m, p in found if m)
            if epochs:
                out.append(("resume checkpoint (audit it)", str(epochs[-1][1].resolve())))
        for step in self.steps:
            out += [(what, str(Path(path).resolve()) if isinstance(path, Path) else str(path)) for what,
                    path in getattr(step, "written", ())]
        return out

    def run(self) -> list[tuple[str, str]]:
        files = self.files()
        if files:
            width = max(len(what) for what, _ in files)
            print("\nwritten:\n" + "\n".join(f"  {what:{width}}  {path}" for what, path in files), flush=True)
        return files
