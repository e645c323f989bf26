"""The training engine: MONAI's SupervisedTrainer with the dataset index passed to the loss."""

from __future__ import annotations

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from ..data.datalist import INDEX_KEY


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the iteration and the dataset indices."""


class NVUMTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose loss is called as ``loss(logits, labels, index)``.

    The loss returns a dict with ``loss`` and its parts (``bce``, ``reg``); all of them land in
    ``engine.state.output`` next to ``image``, ``label``, ``pred`` and ``index`` (the batch's
    dataset indices, (B,) int64), where the memory handler and the metrics read them. The loss
    is computed in float32 even when the forward pass runs under mixed precision, and a NaN or
    infinite loss stops training with the iteration and dataset indices in the message.

    Takes the same arguments as :class:`monai.engines.SupervisedTrainer`; gradient accumulation is
    not supported (NVUM's memory is updated per optimiser step).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.accumulation_steps != 1:
            raise ValueError("NVUMTrainer does not support gradient accumulation (accumulation_steps must be 1)")

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
