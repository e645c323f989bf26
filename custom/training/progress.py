"""What a training run shows: the epoch averages of the loss and its parts, and at its end every file it wrote.

The progress bar and the per-epoch lines are stock (ignite's ``ProgressBar``, MONAI's ``StatsHandler``)."""

from __future__ import annotations

from pathlib import Path

from ignite.engine import Engine

#: parts of the training step's output that are averaged, shown and logged.
LOSS_PARTS = ("loss", "bce", "reg")


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
