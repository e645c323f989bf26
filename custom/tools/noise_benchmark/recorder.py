"""The benchmark's own handler: noisy-validation and clean-test AUC, and the wrong training labels
fitted, of a training run, epoch by epoch."""

from __future__ import annotations

import copy
import math
from typing import Sequence

from ...labels import disease_indices


class CleanTestAUC:
    """Records noisy-validation and clean-test mean AUC of a training run, epoch by epoch.

    Attach it to the trainer after the validation handler. After every epoch it reads the
    evaluator's key metric (noisy validation mean AUC) and, with ``every_epoch``, evaluates
    ``network`` on each test set and, with ``train_set``, measures the share of wrong training
    labels the network has fitted (:mod:`.fitting`), every ``eval_every`` epochs and at every
    epoch that improves the validation metric (so the selected epoch is always measured) and at
    the last one. Without ``every_epoch`` it keeps a copy of the weights of the epoch with the best
    validation metric and evaluates that copy and the final weights once, when training completes
    (cheaper, same numbers at those two epochs).

    The mean AUC of a test set is over the diseases with at least ``min_positives`` positives
    in it (No Finding excluded); the others are listed in :attr:`left_out` (their AUC rests on a
    handful of images).

    Args:
        network: the network that is validated (``@teacher.eval_network``).
        evaluator: the validation engine.
        test_sets: name -> ``(images, labels)``: a (N, 3, H, W) float tensor of preprocessed
            images and their (N, C) clean labels.
        classes: class names.
        every_epoch: evaluate the test sets during training (the curve).
        batch_size: inference batch size.
        eval_every: with ``every_epoch``, the curve's step in epochs.
        train_set: optional ``(images, noisy_labels, clean_labels)`` of the training split.
        min_positives: fewest positives for a disease to enter a test set's mean.
    """

    def __init__(
        self,
        network,
        evaluator,
        test_sets: dict,
        classes: Sequence[str],
        every_epoch: bool = True,
        batch_size: int = 512,
        train_set=None,
        min_positives: int = 10,
        eval_every: int = 1,
    ):
        import numpy as np

        self.network, self.evaluator = network, evaluator
        self.test_sets, self.diseases = test_sets, disease_indices(classes)
        self.every_epoch, self.batch_size, self.eval_every = bool(every_epoch), int(batch_size), max(1, int(eval_every))
        self.train_set = train_set
        self.included = {name: [c for c in self.diseases if int(np.asarray(labels)[:, c].sum()) >= min_positives]
                         for name, (_, labels) in test_sets.items()}
        self.left_out = {
            name: [classes[c] for c in self.diseases if c not in used] for name, used in self.included.items()
        }
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
        from ...evaluation.metrics import mean_auc, per_class_auc

        net = network if network is not None else self.network
        means, classes = {}, {}
        for name, (images, labels) in self.test_sets.items():
            aucs = per_class_auc(self._logits(net, images), labels)
            means[name] = mean_auc(aucs, self.included[name])
            classes[name] = [None if math.isnan(a) else float(a) for a in aucs]
        return means, classes

    def fitted(self, network=None) -> dict:
        """Share of the wrong training labels the network sides with (:func:`.fitting.wrong_labels_fitted`)."""
        from .fitting import wrong_labels_fitted

        images, noisy, clean = self.train_set
        return wrong_labels_fitted(
            self._logits(network if network is not None else self.network, images), noisy, clean, self.diseases
        )

    def _logits(self, net, images):
        """(N, C) float32 logits of ``net`` (in eval mode) on preprocessed images."""
        import torch

        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        with torch.no_grad():
            logits = torch.cat(
                [
                    net(images[i : i + self.batch_size].to(device)).float().cpu()
                    for i in range(0, len(images), self.batch_size)
                ]
            )
        net.train(was_training)
        return logits

    def _epoch(self, engine) -> None:
        state = self.evaluator.state
        epoch = engine.state.epoch
        row = {"epoch": epoch, "val": float(state.metrics[state.key_metric_name])}
        for key in ("train_loss", "train_bce", "train_reg"):
            if key in engine.state.metrics:
                row[key] = float(engine.state.metrics[key])
        improved = state.best_metric_epoch == epoch
        measured = epoch % self.eval_every == 0 or improved or epoch == engine.state.max_epochs
        if self.every_epoch and measured:
            row["test"], row["test_classes"] = self.evaluate()
            if self.train_set is not None:
                row["fitted"] = self.fitted()
            if improved:
                self.best = {k: row[k] for k in ("epoch", "val", "test", "test_classes", "fitted") if k in row}
        elif improved:
            self._best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            self.best = {"epoch": epoch, "val": row["val"]}
        self.history.append(row)

    def _completed(self, engine) -> None:
        last = self.history[-1]
        if self.every_epoch and "test" in last:
            self.last = {k: last[k] for k in ("epoch", "val", "test", "test_classes", "fitted") if k in last}
            return
        self.last = {"epoch": last["epoch"], "val": last["val"]}
        self.last["test"], self.last["test_classes"] = self.evaluate()
        if self.train_set is not None:
            self.last["fitted"] = self.fitted()
        if self.best is not None and self._best_state is not None:
            if self.best["epoch"] == last["epoch"]:
                self.best["test"], self.best["test_classes"] = self.last["test"], self.last["test_classes"]
            else:
                best_net = copy.deepcopy(self.network)
                best_net.load_state_dict(self._best_state)
                self.best["test"], self.best["test_classes"] = self.evaluate(best_net)
        self._best_state = None


_TEST_CACHE: dict = {}


def _preprocessed(parser, items):
    """(N, 3, H, W) float tensor of the items' images through the config's (deterministic) preprocessing."""
    import torch

    transform = parser.get_parsed_content("validate#preprocessing")
    return torch.stack([torch.as_tensor(transform(dict(item))["image"]) for item in items]).float()


def _training_set(parser, datalist):
    """The training images (preprocessed as for validation) with their noisy and clean labels."""
    return (
        _preprocessed(parser, datalist.items("training")),
        datalist.labels("training"),
        datalist.labels("training", "clean_label"),
    )


def _test_sets(parser, datalist) -> dict:
    """Preprocessed clean test images and labels of every test split (cached per data list)."""
    key = str(datalist.path)
    if key not in _TEST_CACHE:
        sets = {
            split: (_preprocessed(parser, datalist.items(split)), datalist.labels(split))
            for split in datalist.test_splits
        }
        _TEST_CACHE.clear()
        _TEST_CACHE[key] = sets
    return _TEST_CACHE[key]
