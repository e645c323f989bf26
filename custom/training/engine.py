"""The training engine: MONAI's SupervisedTrainer with the dataset index passed to the loss."""

from __future__ import annotations

import random

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from ..data.datalist import INDEX_KEY


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random generator during ``epoch`` (1-based) of a run seeded with ``seed``."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**32)


def last_batch_problem(data_loader, network) -> str | None:
    """Why training would stop at the end of the first epoch: a last batch of one image, which a network with
    batch norm cannot train on ("Expected more than 1 value per channel"); ``None`` when there is none."""
    batch_size = getattr(data_loader, "batch_size", None)
    if not batch_size or getattr(data_loader, "drop_last", False):
        return None
    sampler = getattr(data_loader, "sampler", None)
    try:
        n = len(sampler) if sampler is not None else len(data_loader.dataset)
    except TypeError:
        return None
    modules = network.modules() if isinstance(network, torch.nn.Module) else ()
    if n % batch_size != 1 or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules):
        return None
    near = sorted((b for b in range(2, batch_size + 9) if n % b != 1), key=lambda b: (abs(b - batch_size), b))[:2]
    return (f"{n} training images in batches of {batch_size} (batch_size) leave a last batch of 1 image, which "
            f"batch norm cannot train on: choose a batch_size that leaves more (e.g. {' or '.join(map(str, near))}), "
            "or change the number of training images")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the iteration and the dataset indices."""


class NVUMTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose loss is called as ``loss(logits, labels, index)``.

    The loss returns a dict with ``loss`` and its parts (``bce``, ``reg``); all of them land in
    ``engine.state.output`` next to ``image``, ``label``, ``pred`` and ``index`` (the batch's
    dataset indices, (B,) int64), where the memory handler and the metrics read them. The loss
    is computed in float32 even when the forward pass runs under mixed precision, and a NaN or
    infinite loss stops training with the iteration and dataset indices in the message.

    Why not the stock trainer: the loss needs the batch's dataset indices (NVUM's memory rows), and
    the method's own handlers (the EMA teacher, the memory update) must run before the config's.
    Besides :class:`monai.engines.SupervisedTrainer`'s arguments (gradient accumulation is not
    supported: NVUM's memory is updated per optimiser step) it takes:

    Args:
        seed: every random generator (torch, numpy, python, the training transforms) is reseeded at
            the start of epoch ``k`` with :func:`epoch_seed` ``(seed, k)``, so what an epoch draws does
            not depend on whether the run was interrupted and resumed; ``None``: no reseeding.
        teacher: the EMA teacher (:class:`custom.EMATeacher`), attached before the config's handlers.
            The updater of the loss's memory (``loss_function.memory.updater``, when the loss reads a
            memory) is attached after it, and the epoch averages of the loss and its parts become
            ``train_loss``, ``train_bce``, ``train_reg`` in ``state.metrics``.
        tracker: the run's MLflow tracker (:class:`custom.MLflowTracker`; ``None`` with tracking off),
            attached after the config's handlers (it attaches itself to the validation engine too) and
            finished after the steps below, which log to it.
        after_training: steps run after the last epoch (objects with ``run()``: the test report, the
            export and registration), in order, when ``test_and_deploy`` is true. ``None`` entries
            (components the config disabled) are skipped.
        test_and_deploy: run ``after_training``.

    ``amp`` may be ``"auto"`` (on with a CUDA device) or given as ``"true"``/``"false"`` (as on a
    command line). Whether training ends or fails, the files the run wrote are listed last
    (:class:`custom.RunSummary`).
    """

    def __init__(self, *args, seed: int | None = None, teacher=None, tracker=None, after_training=(),
                 test_and_deploy=True, **kwargs):
        from ..flags import as_bool, resolve_auto
        from .progress import LossAverages

        handlers = [h for h in (kwargs.pop("train_handlers", None) or []) if h is not None]
        if "amp" in kwargs:
            kwargs["amp"] = resolve_auto(kwargs["amp"], kwargs.get("device", "cpu"), "amp")
        loss = kwargs.get("loss_function", args[5] if len(args) > 5 else None)
        memory = getattr(loss, "memory", None) if getattr(loss, "uses_memory", False) else None
        updater = getattr(memory, "updater", None)
        first = [h for h in (teacher, updater) if h is not None] + [LossAverages()]
        self.tracker = tracker
        last = [tracker] if tracker is not None else []
        super().__init__(*args, train_handlers=first + handlers + last, **kwargs)
        if self.accumulation_steps != 1:
            raise ValueError("NVUMTrainer does not support gradient accumulation (accumulation_steps must be 1)")
        self._check_setup()
        self.seed = None if seed is None else int(seed)
        self.run_handlers = handlers
        self.after_training = [s for s in (after_training or []) if s is not None]
        self.test_and_deploy = as_bool(test_and_deploy, "test_and_deploy")
        if self.seed is not None:
            self.add_event_handler(Events.EPOCH_STARTED, self._reseed)
            handlers_ = self._event_handlers[Events.EPOCH_STARTED]
            handlers_.insert(0, handlers_.pop())  # before every other handler of the epoch

    def _check_setup(self) -> None:
        """Refuse, before any work, what would fail mid-run: invalid epochs or learning rate, a last batch of
        one image under batch norm."""
        from ..flags import check_settings

        check_settings({"max_epochs": self.state.max_epochs})
        for group in getattr(self.optimizer, "param_groups", []):
            check_settings({"learning_rate": group.get("lr")})
        problem = last_batch_problem(self.data_loader, self.network)
        if problem:
            raise ValueError(problem)

    def check_steps(self) -> None:
        """Check, before training, that the steps after training can run (``check()`` of each: the test report
        needs test sets, the folders must be writable); nothing when ``test_and_deploy`` is off."""
        if self.test_and_deploy:
            for step in self.after_training:
                if callable(getattr(step, "check", None)):
                    step.check()

    def _reseed(self, engine) -> None:
        s = epoch_seed(self.seed, engine.state.epoch)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        transform = getattr(getattr(self.data_loader, "dataset", None), "transform", None)
        if transform is not None and hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=s)

    def run(self) -> None:
        """Train, then (with ``test_and_deploy``) run the steps after training; list the files written."""
        try:
            self.check_steps()
            super().run()
            if self.test_and_deploy:
                for step in self.after_training:
                    step.run()
            elif self.after_training:
                print("test_and_deploy is off: no test report, the model is neither exported nor registered",
                      flush=True)
            if self.tracker is not None:
                self.tracker.finish()
        finally:
            self.summary.run()

    @property
    def summary(self):
        """The :class:`custom.RunSummary` printed at the end: the checkpoints and what the steps wrote."""
        from .progress import RunSummary

        ckpt_dir = next((h.save_dir for h in self.run_handlers if hasattr(h, "resume_dict")), None)
        return RunSummary(ckpt_dir, self.after_training)

    def _iteration(self, engine, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if INDEX_KEY not in batchdata:
            raise KeyError(f"the batch has no '{INDEX_KEY}' key: build the dataset items with custom.DataList.items()")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[
            :2
        ]
        index = torch.as_tensor(batchdata[INDEX_KEY]).long().to(engine.state.device)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, INDEX_KEY: index}

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        device_type = torch.device(engine.state.device).type
        with torch.autocast(device_type, enabled=bool(engine.amp), **engine.amp_kwargs):
            pred = engine.inferer(inputs, engine.network)
        engine.state.output[Keys.PRED] = pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        terms = engine.loss_function(pred.float(), targets.float(), index)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            raise NonFiniteLossError(
                f"non-finite loss at epoch {engine.state.epoch}, iteration {engine.state.iteration} ({parts}); "
                f"dataset indices of the batch: {index.tolist()}"
            )
        engine.state.output[Keys.LOSS] = loss
        for key, value in terms.items():
            if key != "loss":
                engine.state.output[key] = value.detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
