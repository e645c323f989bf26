"""The inference network of a bundle: weights (``model.pt``) or TorchScript (``model.ts``), loaded on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..networks import load_weights


class BundleNetwork(torch.nn.Module):
    """The inference network of a bundle, read from the first model file that exists, on first use.

    ``inference.json`` lists ``models/model.pt`` (weights for ``network_def``) and then
    ``models/model.ts`` (TorchScript), so the same config runs in the repository (after training)
    and in the deployable bundle, which ships the TorchScript model only. Loading waits for the
    first forward pass, so the config can be parsed and checked before a model exists.

    A weights file that training wrote comes with its run record (``model.json``,
    :class:`custom.record.RunRecord`): the network is then built from the recorded definition, and
    classes or an input size that differ from the config's stop with a message naming the
    override to use, instead of predicting with mismatched outputs or inputs.

    Args:
        network_def: the network architecture (used for weights files without a record).
        model_files: candidate files in order of preference; ``.ts`` files are TorchScript.
        device: where the network runs.
        classes, image_size: the config's classes and input size, checked against the record.

    Raises:
        FileNotFoundError: (on first use) none of ``model_files`` exists; all are named.
        ValueError: (on first use) the record names other classes or another input size.
    """

    def __init__(
        self, network_def: torch.nn.Module, model_files: Sequence, device="cpu", classes=None, image_size=None
    ):
        super().__init__()
        self._network_def = [network_def]  # a list: not registered as a submodule until loaded
        self.model_files = [Path(p) for p in ([model_files] if isinstance(model_files, (str, Path)) else model_files)]
        self.device = device
        self.classes = [str(c) for c in classes] if classes is not None else None
        self.image_size = int(image_size) if image_size is not None else None
        self.network: torch.nn.Module | None = None
        self.model_file: Path | None = None

    def load(self) -> torch.nn.Module:
        """Load (once) and return the network."""
        if self.network is None:
            found = [p for p in self.model_files if p.is_file()]
            if not found:
                raise FileNotFoundError(
                    "no model found; none of these files exists: " + ", ".join(str(p) for p in self.model_files)
                )
            self.model_file = found[0]
            self.network = load_inference_network(self._recorded_network(), self.model_file, self.device)
        return self.network

    def _recorded_network(self) -> torch.nn.Module:
        """``network_def``, or the network the record beside a weights file holds (checked against the config)."""
        from ..networks import rebuild_network
        from ..record import read_record, record_path

        record_file = record_path(self.model_file)
        if self.model_file.suffix == ".ts" or not record_file.is_file():
            return self._network_def[0]
        record = read_record(record_file)
        if self.classes is not None and record.get("classes") and list(record["classes"]) != self.classes:
            raise ValueError(
                f"{self.model_file} was trained on classes {record['classes']} (see {record_file}), but the "
                f"inference config has {self.classes}: pass --classes \"{record['classes']}\""
            )
        if self.image_size is not None and record.get("image_size") and int(record["image_size"]) != self.image_size:
            raise ValueError(
                f"{self.model_file} was trained on {record['image_size']} px images (see {record_file}), but "
                f"the inference config resizes to {self.image_size} px: pass --image_size {record['image_size']}"
            )
        return rebuild_network(record.get("network"), len(record.get("classes") or self.classes or []),
                               self._network_def[0], f"{self.model_file} (see {record_file})")

    def forward(self, *args):
        return self.load()(*args)


def load_inference_network(network_def: torch.nn.Module, path, device="cpu") -> torch.nn.Module:
    """The network to run inference with, in eval mode on ``device``.

    A ``.ts`` file is loaded as TorchScript (``network_def`` is not used); any other file is read
    as weights into ``network_def`` (keys and shapes must match, see :func:`custom.networks.load_weights`).
    """
    path = Path(path)
    if path.suffix == ".ts":
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript model not found: {path}")
        return TorchScriptRunner(torch.jit.load(str(path), map_location=device)).eval()
    return load_weights(network_def, path).to(device).eval()


class TorchScriptRunner(torch.nn.Module):
    """Calls a TorchScript module with the JIT's graph optimisation off.

    With it on, the first two calls of the DenseNet121 export each cost about 5 CPU seconds
    (profiling, then optimisation passes; measured at 32 px, batch 4); with it off the second call
    costs about a third of that. Later calls and the outputs are the same either way.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        #: with ``keep_features`` (set by :class:`custom.evaluation.ood.OODGate`), each call keeps the pooled
        #: features of its batch in ``features`` (:func:`custom.evaluation.ood.logits_and_features`: a hook
        #: cannot be added to a TorchScript model)
        self.keep_features, self.features = False, None

    def forward(self, *args):
        if getattr(self, "keep_features", False):
            from ..evaluation.ood import logits_and_features

            logits, self.features = logits_and_features(self.module, *args)
            return logits
        with torch.jit.optimized_execution(False):
            return self.module(*args)
