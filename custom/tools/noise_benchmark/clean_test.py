"""The benchmark's own handler: noisy-validation and clean-test AUC of a training run, epoch by epoch."""

from __future__ import annotations

import copy
import math
from typing import Sequence

from ...labels import disease_indices


class CleanTestAUC:
    """Records noisy-validation and clean-test mean AUC of a training run, epoch by epoch.

    Attach it to the trainer after the validation handler. After every epoch it reads the
    evaluator's key metric (noisy validation mean AUC) and, with ``every_epoch``, evaluates
    ``network`` on each test set. Without ``every_epoch`` it keeps a copy of the weights of the
    epoch with the best validation metric and evaluates that copy and the final weights once,
    when training completes (cheaper, same numbers at those two epochs).

    Args:
        network: the network that is validated (``@teacher.eval_network``).
        evaluator: the validation engine.
        test_sets: name -> ``(images, labels)``: a (N, 3, H, W) float tensor of preprocessed
            images and their (N, C) clean labels.
        classes: class names (the mean is over the diseases, No Finding excluded).
        every_epoch: evaluate the test sets after every epoch.
        batch_size: inference batch size.
    """

    def __init__(self, network, evaluator, test_sets: dict, classes: Sequence[str], every_epoch: bool = True, batch_size: int = 512):
        self.network, self.evaluator = network, evaluator
        self.test_sets, self.diseases = test_sets, disease_indices(classes)
        self.every_epoch, self.batch_size = bool(every_epoch), int(batch_size)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.last: dict | None = None
        self._best_state = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def evaluate(self, network=None) -> tuple[dict[str, float], dict[str, list]]:
        """Mean disease AUC and per-class AUCs (NaN: undefined) of ``network`` (default: the
        tracked one) on every test set."""
        import torch

        from ...evaluation.metrics import mean_auc, per_class_auc

        net = network if network is not None else self.network
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        means, classes = {}, {}
        with torch.no_grad():
            for name, (images, labels) in self.test_sets.items():
                logits = torch.cat([net(images[i : i + self.batch_size].to(device)).float().cpu() for i in range(0, len(images), self.batch_size)])
                aucs = per_class_auc(logits, labels)
                means[name] = mean_auc(aucs, self.diseases)
                classes[name] = [None if math.isnan(a) else float(a) for a in aucs]
        net.train(was_training)
        return means, classes

    def _epoch(self, engine) -> None:
        state = self.evaluator.state
        epoch = engine.state.epoch
        row = {"epoch": epoch, "val": float(state.metrics[state.key_metric_name])}
        for key in ("train_loss", "train_bce", "train_reg"):
            if key in engine.state.metrics:
                row[key] = float(engine.state.metrics[key])
        improved = state.best_metric_epoch == epoch
        if self.every_epoch:
            row["test"], row["test_classes"] = self.evaluate()
            if improved:
                self.best = {"epoch": epoch, "val": row["val"], "test": row["test"], "test_classes": row["test_classes"]}
        elif improved:
            self._best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            self.best = {"epoch": epoch, "val": row["val"]}
        self.history.append(row)

    def _completed(self, engine) -> None:
        last = self.history[-1]
        if self.every_epoch:
            self.last = {"epoch": last["epoch"], "val": last["val"], "test": last["test"], "test_classes": last["test_classes"]}
            return
        self.last = {"epoch": last["epoch"], "val": last["val"]}
        self.last["test"], self.last["test_classes"] = self.evaluate()
        if self.best is not None and self._best_state is not None:
            if self.best["epoch"] == last["epoch"]:
                self.best["test"], self.best["test_classes"] = self.last["test"], self.last["test_classes"]
            else:
                best_net = copy.deepcopy(self.network)
                best_net.load_state_dict(self._best_state)
                self.best["test"], self.best["test_classes"] = self.evaluate(best_net)
        self._best_state = None


_TEST_CACHE: dict = {}


def _test_sets(parser, datalist) -> dict:
    """Preprocessed clean test images and labels of every test split (cached per data list)."""
    import torch

    key = str(datalist.path)
    if key not in _TEST_CACHE:
        transform = parser.get_parsed_content("validate#preprocessing")
        sets = {}
        for split in datalist.test_splits:
            items = datalist.items(split)
            images = torch.stack([torch.as_tensor(transform(dict(item))["image"]) for item in items]).float()
            sets[split] = (images, datalist.labels(split))
        _TEST_CACHE.clear()
        _TEST_CACHE[key] = sets
    return _TEST_CACHE[key]


#: training handlers of train.json that the benchmark leaves out: the full-state checkpoint of
#: every epoch (for resuming; about 90 MB written per epoch) and the per-iteration progress bar
