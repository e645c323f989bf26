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


def listed(handler):
    """``handler`` itself: an object defined (and referenced) elsewhere in the config, listed in a handler list
    as ``{"_target_": "custom.listed", "handler": "@teacher"}`` (MONAI's bundle checks read every entry of
    ``train#handlers`` as a ``_target_`` component). For a disabled component it is ``None``, which MONAI's
    config parser leaves out of the list."""
    return handler


class EpochReseed:
    """Every random generator (torch, numpy, python, the training transforms) reseeded at the start of epoch
    ``k`` with :func:`epoch_seed` ``(seed, k)``, so that what an epoch draws (shuffling, augmentation) does not
    depend on whether the run was interrupted and resumed. First in ``train#handlers``: it runs before every
    other handler of the epoch.

    Args:
        seed: the run's seed; ``None``: no reseeding.
        transform: the random transforms to reseed; default those of the engine's training data set.
    """

    def __init__(self, seed: int | None, transform=None):
        self.seed = None if seed is None else int(seed)
        self.transform = transform

    def attach(self, engine) -> None:
        if self.seed is None:
            return
        if self.transform is None:
            self.transform = getattr(getattr(getattr(engine, "data_loader", None), "dataset", None), "transform", None)
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        s = epoch_seed(self.seed, engine.state.epoch)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=s)


class NVUMTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose loss is called as ``loss(logits, labels, index)``.

    The loss returns a dict with ``loss`` and its parts (``bce``, ``reg``); all of them land in
    ``engine.state.output`` next to ``image``, ``label``, ``pred`` and ``index`` (the batch's
    dataset indices, (B,) int64), where the memory updater and the loss averages read them. The loss
    is computed in float32 even when the forward pass runs under mixed precision, and a NaN or
    infinite loss stops training with the iteration and dataset indices in the message.

    Why not the stock trainer: the loss needs the batch's dataset indices (NVUM's memory rows). Every
    handler (the EMA teacher, the memory updater, the checkpoints, ...) is listed in train.json's
    ``train#handlers``; ``None`` entries (components the config disabled) are skipped. Takes
    :class:`monai.engines.SupervisedTrainer`'s arguments (gradient accumulation is not supported:
    NVUM's memory is updated per optimiser step); ``amp`` may be ``"auto"`` (on with a CUDA device) or
    given as ``"true"``/``"false"`` (as on a command line). Invalid epochs or learning rate, and a last
    batch of one image under batch norm, are refused before any work.
    """

    def __init__(self, *args, **kwargs):
        from ..flags import resolve_auto

        kwargs["train_handlers"] = [h for h in (kwargs.get("train_handlers") or []) if h is not None]
        if "amp" in kwargs:
            kwargs["amp"] = resolve_auto(kwargs["amp"], kwargs.get("device", "cpu"), "amp")
        super().__init__(*args, **kwargs)
        if self.accumulation_steps != 1:
            raise ValueError("NVUMTrainer does not support gradient accumulation (accumulation_steps must be 1)")
        self._check_setup()

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
