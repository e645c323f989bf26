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
    """The steps after training, checked before it, and the last lines of a run: every file it wrote.

    Lists the best network ``model.pt`` and its run record ``model.json`` and the last resume
    checkpoint ``checkpoint_epoch=K.pt`` of ``ckpt_dir`` (when given), then what each step wrote:
    every step object with a ``written`` list of ``(what, path)`` pairs (:class:`custom.TestReport`:
    test tables and ROC figures; :class:`custom.ModelRegistrar`: ``model.ts``, the bundle zip, the
    MLflow model). In train.json it is also a handler of the trainer (before ``StatsHandler``): when
    training starts it runs ``check()`` of every step (the test report needs test sets, the folders
    must be writable), so that a step that would fail after training fails before it; when training
    fails it prints the list and re-raises. The workflow's ``training`` list prints it last.

    Args:
        ckpt_dir: the run's checkpoint folder (``None``: list only what the steps wrote, e.g. for evaluation).
        steps: the steps of the run, in order: a list, or a dict naming them; ``None`` entries (components
            the config disabled) are printed as not run.
    """

    def __init__(self, ckpt_dir=None, steps=()):
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir not in (None, "") else None
        named = steps.items() if isinstance(steps, dict) else ((None, step) for step in steps)
        self.skipped = [name or "a step" for name, step in named if step is None]
        self.steps = [step for step in (steps.values() if isinstance(steps, dict) else steps) if step is not None]

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.check)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)

    def check(self, engine: Engine | None = None) -> None:
        """``check()`` of every step: what would make it fail after training (no test set, a read-only folder)."""
        for step in self.steps:
            if callable(getattr(step, "check", None)):
                step.check()

    def failed(self, engine: Engine, error: BaseException) -> None:
        """Training failed: list what it wrote, then re-raise."""
        self.run()
        raise error

    def files(self) -> list[tuple[str, str]]:
        """``(what, path)`` of every file written, in the order they are printed."""
        out = []
        if self.ckpt_dir is not None:
            from ..record import record_path
            from .checkpoints import epoch_checkpoints

            best = self.ckpt_dir / "model.pt"
            if best.is_file():
                out.append(("best network", str(best.resolve())))
                if record_path(best).is_file():
                    out.append(("its run record", str(record_path(best).resolve())))
            epochs = epoch_checkpoints(self.ckpt_dir)
            if epochs:
                out.append(("resume checkpoint (audit it)", str(epochs[-1][1].resolve())))
        for step in self.steps:
            out += [(what, str(Path(path).resolve()) if isinstance(path, Path) else str(path)) for what,
                    path in getattr(step, "written", ())]
        return out

    def run(self) -> list[tuple[str, str]]:
        """Print the steps that were switched off, then every file written; returns the files."""
        if self.skipped:
            print(f"not run (switched off): {', '.join(self.skipped)}", flush=True)
        files = self.files()
        if files:
            width = max(len(what) for what, _ in files)
            print("\nwritten:\n" + "\n".join(f"  {what:{width}}  {path}" for what, path in files), flush=True)
        return files
