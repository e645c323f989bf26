"""Multi-label losses: NVUM (BCE + lambda * REG) and the baseline losses it is compared with.

Every loss here is called as ``loss(logits, target, index)`` and returns a dict of scalar
tensors: ``loss`` (what is minimised) and its parts for logging, ``bce`` (the data term: BCE,
or the focal term for the focal loss) and ``reg`` (the regulariser; zero for the baselines). Logits and
targets are cast to float32 first, so the loss stays in float32 under mixed precision.

Paper (eq. 1, 2): ``L = BCE(y, sigmoid(z)) + lambda * log(1 - sigmoid(t . p))`` with
``p = sigmoid(z)`` and ``t`` the memory row of the image. ``log(1 - sigmoid(s))`` is computed as
``-softplus(s)``, which is finite for every float32 ``s``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .memory import NVUMMemory
from ..flags import as_bool

LOSS_NAMES = ("nvum", "bce", "logit_adjusted_bce", "focal")
REG_FORMS = ("dot", "elementwise")
CLASS_REDUCTIONS = ("sum", "mean")


def log1m_sigmoid(s: torch.Tensor) -> torch.Tensor:
    """``log(1 - sigmoid(s))`` computed stably as ``-softplus(s)``."""
    return -F.softplus(s)


def _reduce_classes(x: torch.Tensor, how: str) -> torch.Tensor:
    """(B, C) -> (B,) by summing or averaging over classes."""
    if how == "sum":
        return x.sum(dim=1)
    if how == "mean":
        return x.mean(dim=1)
    raise ValueError(f"class_reduction must be one of {CLASS_REDUCTIONS}, got {how!r}")


def _check(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.shape != target.shape or logits.ndim != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(target.shape)} must both be (batch, classes)")
    if logits.dtype != torch.float64:
        logits = logits.float()  # float32 under mixed precision; float64 stays (gradient checks)
    return logits, target.to(logits.dtype)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, optionally with logit adjustment.

    Args:
        log_prior: (C,) log class prior; only used when ``prior_in_bce`` is true.
        prior_in_bce: logit-adjusted BCE, ``BCE(y, sigmoid(z + log pi))`` (paper, Fig. 2 ablation).
        class_reduction: ``"sum"`` over classes per image (paper's eq. 4 form) or ``"mean"``.
    """

    uses_memory = False

    def __init__(self, log_prior=None, prior_in_bce: bool = False, class_reduction: str = "sum"):
        super().__init__()
        self.prior_in_bce = as_bool(prior_in_bce, "prior_in_bce")
        if self.prior_in_bce and log_prior is None:
            raise ValueError("prior_in_bce needs the class prior")
        _reduce_classes(torch.zeros(1, 1), class_reduction)
        self.class_reduction = class_reduction
        self.log_prior = log_prior  # (C,) tensor, shared with the memory when it comes from there

    def per_image_bce(self, logits: torch.Tensor, target: torch.Tensor, log_prior=None) -> torch.Tensor:
        """(B, C) float32 logits and labels -> (B,) BCE per image of ``logits + log_prior`` (when given)."""
        if log_prior is not None:
            logits = logits + log_prior
        return _reduce_classes(
            F.binary_cross_entropy_with_logits(logits, target, reduction="none"), self.class_reduction
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index=None) -> dict[str, torch.Tensor]:
        logits, target = _check(logits, target)
        bce = self.per_image_bce(logits, target, self.log_prior if self.prior_in_bce else None).mean()
        return {"loss": bce, "bce": bce, "reg": torch.zeros_like(bce)}


class FocalLoss(nn.Module):
    """Sigmoid focal loss ``-(1 - p_t)^gamma * log(p_t)`` per class (Lin et al., 2017).

    Args:
        gamma: focusing parameter, 2 by default.
        alpha: optional weight of the positives in [0, 1] (negatives get ``1 - alpha``).
        class_reduction: ``"sum"`` or ``"mean"`` over classes per image.
    """

    uses_memory = False

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, class_reduction: str = "sum"):
        super().__init__()
        _reduce_classes(torch.zeros(1, 1), class_reduction)
        self.gamma, self.alpha, self.class_reduction = float(gamma), alpha, class_reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index=None) -> dict[str, torch.Tensor]:
        logits, target = _check(logits, target)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        loss = _reduce_classes(loss, self.class_reduction).mean()
        return {"loss": loss, "bce": loss, "reg": torch.zeros_like(loss)}


class NVUMLoss(nn.Module):
    """NVUM loss: ``BCE + lambda * REG`` with REG read from the memory (the loss never writes it).

    Args:
        memory: the :class:`~custom.nvum.NVUMMemory`; its log prior is the one used here.
        reg: ``"dot"`` (paper eq. 2: one scalar ``log(1 - sigmoid(t_i . p_i))`` per image) or
            ``"elementwise"`` (authors' code: ``log(1 - sigmoid(t_ic * p_ic))`` averaged over classes).
        reg_weight: lambda (1 in the paper).
        class_reduction: reduction of BCE over classes. ``None`` picks the pairing under which the
            gradient is the paper's eq. 4: ``"sum"`` for ``dot``, ``"mean"`` for ``elementwise``.
        detach_reg: stop the gradient through REG (what the authors' code did until a late fix).
        prior_in_bce: use ``z + log pi`` inside BCE (ablation "prior on BCE").
        prior_in_reg: use ``p = sigmoid(z + log pi)`` inside REG (ablation "prior on REG").
        mix_memory: mix the memory rows of the batch with a random permutation of them,
            weight ``max(l, 1 - l)`` with ``l ~ Beta(1, 1)`` (authors' code).
        clamp: clamp ``p`` to ``[clamp, 1 - clamp]`` inside REG (authors' code: 1e-4); ``None`` for no clamping.
    """

    uses_memory = True

    def __init__(
        self,
        memory: NVUMMemory,
        reg: str = "dot",
        reg_weight: float = 1.0,
        class_reduction: str | None = None,
        detach_reg: bool = False,
        prior_in_bce: bool = False,
        prior_in_reg: bool = False,
        mix_memory: bool = False,
        clamp: float | None = None,
    ):
        super().__init__()
        if reg not in REG_FORMS:
            raise ValueError(f"reg must be one of {REG_FORMS}, got {reg!r}")
        self.memory = memory
        self.reg, self.reg_weight = reg, float(reg_weight)
        self.detach_reg = as_bool(detach_reg, "detach_reg")
        self.prior_in_reg = as_bool(prior_in_reg, "prior_in_reg")
        self.mix_memory = as_bool(mix_memory, "mix_memory")
        self.clamp = clamp
        reduction = class_reduction or ("sum" if reg == "dot" else "mean")
        self.prior_in_bce = as_bool(prior_in_bce, "prior_in_bce")  # the prior is read from the memory at each call
        self.bce = BCELoss(class_reduction=reduction)

    def per_image_reg(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, C) float32 logits and (B,) dataset indices -> (B,) REG per image (<= 0)."""
        z = logits + self.memory.log_prior if self.prior_in_reg else logits
        p = torch.sigmoid(z)
        if self.detach_reg:
            p = p.detach()
        t = self.memory(index)
        if self.mix_memory and t.shape[0] > 1:
            lam = float(torch.distributions.Beta(1.0, 1.0).sample())
            lam = max(lam, 1.0 - lam)
            t = lam * t + (1.0 - lam) * t[torch.randperm(t.shape[0], device=t.device)]
        if self.reg == "dot":
            return log1m_sigmoid((t * p).sum(dim=1))
        if self.clamp is not None:
            p = p.clamp(self.clamp, 1.0 - self.clamp)
        return log1m_sigmoid(t * p).mean(dim=1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        if index is None:
            raise ValueError("the NVUM loss needs each sample's dataset index (key 'index' in the batch)")
        logits, target = _check(logits, target)
        bce = self.bce.per_image_bce(logits, target, self.memory.log_prior if self.prior_in_bce else None).mean()
        reg = self.per_image_reg(logits, index).mean()
        return {"loss": bce + self.reg_weight * reg, "bce": bce, "reg": reg}


def build_loss(name: str, memory: NVUMMemory, **options) -> nn.Module:
    """Build a loss by config name.

    Args:
        name: one of ``nvum``, ``bce``, ``logit_adjusted_bce``, ``focal``.
        memory: the memory (its log prior is used by ``nvum`` and ``logit_adjusted_bce``).
        options: keyword arguments of the chosen class; options that class does not take are
            ignored, so one config block can carry the NVUM options while a baseline is selected.
    """
    import inspect

    if name == "nvum":
        cls, fixed = NVUMLoss, {"memory": memory}
    elif name == "bce":
        cls, fixed = BCELoss, {}
    elif name == "logit_adjusted_bce":
        cls, fixed = BCELoss, {"log_prior": memory.log_prior, "prior_in_bce": True}
    elif name == "focal":
        cls, fixed = FocalLoss, {}
    else:
        raise ValueError(f"unknown loss name {name!r}; expected one of {LOSS_NAMES}")
    accepted = set(inspect.signature(cls.__init__).parameters) - set(fixed) - {"self"}
    kwargs = {k: v for k, v in options.items() if k in accepted}
    if name in ("bce", "logit_adjusted_bce", "focal") and kwargs.get("class_reduction") is None:
        kwargs["class_reduction"] = "sum"
    return cls(**fixed, **kwargs)
