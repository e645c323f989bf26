"""The benchmark's own handler: noisy-validation and clean-test AUC, and the wrong training labels
fitted, of a training run, epoch by epoch."""

from __future__ import annotations

import copy
import math
from typing import Sequence

from ...labels import disease_indices


class CleanTestAUC:
    """Records a training run epoch by epoch: noisy-validation AUC, clean-test AUC, wrong labels fitted.

    Attach it to the trainer after the validation handler. After every epoch it reads the
    evaluator's key metric (noisy validation mean AUC) and keeps a copy of the weights of the best
    one. With ``every_epoch`` (a *curve* run) it also measures, every ``eval_every`` epochs and at
    the last one, the mean AUC on the first ``curve_size`` images of each test set (all of them
    when ``curve_size`` is 0) and, with ``train_set``, the share of wrong labels the network has
    fitted among the first ``curve_size`` training images (:mod:`.fitting`): the curve the figures
    draw (the drop is read on the whole test sets, selected minus last: :func:`.tables.run_metrics`).
    When training completes, the kept best weights and the final weights are evaluated on the
    whole test sets (the *selected* and *last* figures, at exactly those epochs) and on the whole
    training set.

    The mean AUC of a test set is over the diseases with at least ``min_positives`` positives in
    the whole set (No Finding excluded); the others are listed in :attr:`left_out`.

    Args:
        network: the network that is validated (``@teacher.eval_network``).
        evaluator: the validation engine.
        test_sets: name -> ``(images, labels)``: a (N, 3, H, W) float tensor of preprocessed
            images and their (N, C) clean labels.
        classes: class names.
        every_epoch: measure the curve during training.
        batch_size: inference batch size.
        train_set: optional ``(images, noisy_labels, clean_labels)`` of the training split.
        min_positives: fewest positives for a disease to enter a test set's mean.
        eval_every: the curve's step in epochs.
        curve_size: images of each test set, and of the training set, in the curve (0: all).
    """

    def __init__(self, network, evaluator, test_sets: dict, classes: Sequence[str], every_epoch: bool = True,
                 batch_size: int = 512, train_set=None, min_positives: int = 10, eval_every: int = 1,
                 curve_size: int = 0):
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
        n = int(curve_size)
        self.curve_sets = {
            name: (images[:n], labels[:n]) if n else (images, labels) for name, (images, labels) in test_sets.items()
        }
        self.curve_train_set = tuple(part[:n] for part in train_set) if n and train_set is not None else train_set
        self.history: list[dict] = []
        self.best: dict | None = None
        self.last: dict | None = None
        self._best_state = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def evaluate(self, network=None, sets: dict | None = None) -> tuple[dict[str, float], dict[str, list]]:
        """Mean disease AUC and per-class AUCs (NaN: undefined) of ``network`` (default: the
        tracked one) on every test set (default: the whole sets)."""
        from ...evaluation.metrics import mean_auc, per_class_auc

        net = network if network is not None else self.network
        means, classes = {}, {}
        for name, (images, labels) in (sets or self.test_sets).items():
            aucs = per_class_auc(self._logits(net, images), labels)
            means[name] = mean_auc(aucs, self.included[name])
            classes[name] = [None if math.isnan(a) else float(a) for a in aucs]
        return means, classes

    def fitted(self, network=None, train_set=None) -> dict:
        """Share of the wrong training labels the network sides with (:func:`.fitting.wrong_labels_fitted`),
        on ``train_set`` (default: the whole training set)."""
        from .fitting import wrong_labels_fitted

        images, noisy, clean = train_set if train_set is not None else self.train_set
        return wrong_labels_fitted(
            self._logits(network if network is not None else self.network, images), noisy, clean, self.diseases
        )

    def fitted_reference(self) -> dict | None:
        """The shares of the wrong training labels fitted at chance and by a perfect clean ranking
        (:func:`.fitting.reference_levels`), on the whole training set and on the curve's part."""
        from .fitting import reference_levels

        if self.train_set is None:
            return None
        out = reference_levels(self.train_set[1], self.train_set[2], self.diseases)
        curve = reference_levels(self.curve_train_set[1], self.curve_train_set[2], self.diseases)
        return {**out, **{f"curve_{k}": v for k, v in curve.items()}}

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
        if state.best_metric_epoch == epoch:
            self._best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            self.best = {"epoch": epoch, "val": row["val"]}
        if self.every_epoch and (epoch % self.eval_every == 0 or epoch == engine.state.max_epochs):
            row["curve"] = self.evaluate(sets=self.curve_sets)[0]
            if self.train_set is not None:
                row["fitted"] = self.fitted(train_set=self.curve_train_set)
        self.history.append(row)

    def _measure(self, network=None) -> dict:
        out = dict(zip(("test", "test_classes"), self.evaluate(network)))
        if self.train_set is not None:
            out["fitted"] = self.fitted(network)
        return out

    def _completed(self, engine) -> None:
        last = self.history[-1]
        self.last = {"epoch": last["epoch"], "val": last["val"], **self._measure()}
        if self.best is not None and self._best_state is not None:
            if self.best["epoch"] == last["epoch"]:
                self.best.update({k: v for k, v in self.last.items() if k not in ("epoch", "val")})
            else:
                best_net = copy.deepcopy(self.network)
                best_net.load_state_dict(self._best_state)
                self.best.update(self._measure(best_net))
        self._best_state = None


_TEST_CACHE: dict = {}


def _preprocessed(parser, items):
    """(N, 3, H, W) float tensor of the items' images through the config's (deterministic) preprocessing."""
    import torch

    transform = parser.get_parsed_content("validate#preprocessing")
    return torch.stack([torch.as_tensor(transform(dict(item))["image"]) for item in items]).float()


def preprocessed_training_set(parser, datalist):
    """The training images (preprocessed as for validation) with their noisy and clean labels."""
    return (
        _preprocessed(parser, datalist.items("training")),
        datalist.labels("training"),
        datalist.labels("training", "clean_label"),
    )


def preprocessed_test_sets(parser, datalist) -> dict:
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
