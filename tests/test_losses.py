"""The NVUM loss against the paper's equations, and the baseline losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from custom.nvum.losses import BCELoss, FocalLoss, NVUMLoss, build_loss, log1m_sigmoid
from custom.nvum.memory import NVUMMemory

C = 5


def _memory(n=8, values=None, dtype=torch.float32):
    prior = torch.tensor([0.4, 0.1, 0.05, 0.3, 0.5])
    mem = NVUMMemory(n, prior)
    if values is not None:
        mem.values.copy_(values)
    return mem.to(dtype)


def test_dot_reg_gradient_matches_paper_equation_4():
    """d REG_i / d z_ic = -sigmoid(t_i . p_i) * p_ic (1 - p_ic) * t_ic (eq. 4), in float64."""
    torch.manual_seed(0)
    n = 8
    mem = _memory(n, torch.randn(n, C) * 3, dtype=torch.float64)
    loss = NVUMLoss(mem, reg="dot")
    index = torch.arange(n)
    z = torch.randn(n, C, dtype=torch.float64, requires_grad=True)
    reg = loss.per_image_reg(z, index).sum()
    (grad,) = torch.autograd.grad(reg, z)
    p = torch.sigmoid(z.detach())
    t = mem.values
    expected = -torch.sigmoid((t * p).sum(1, keepdim=True)) * p * (1 - p) * t
    rel = (grad - expected).norm() / expected.norm()
    assert rel < 1e-6


def test_total_gradient_is_p_minus_y_plus_g():
    """With BCE summed over classes, d(BCE_i + REG_i)/dz_i = p_i - y_i + g_i (eq. 4)."""
    torch.manual_seed(1)
    n = 6
    mem = _memory(n, torch.randn(n, C) * 2, dtype=torch.float64)
    loss = NVUMLoss(mem, reg="dot")
    assert loss.bce.class_reduction == "sum"
    z = torch.randn(n, C, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(n, C) > 0.5).double()
    out = loss(z, y, torch.arange(n))
    (grad,) = torch.autograd.grad(out["loss"] * n, z)  # undo the batch mean
    p = torch.sigmoid(z.detach())
    t = mem.values
    g = -torch.sigmoid((t * p).sum(1, keepdim=True)) * p * (1 - p) * t
    assert torch.allclose(grad, p - y + g, rtol=1e-9, atol=1e-12)


def test_reg_weight_lambda_scales_reg_in_the_loss_and_the_gradient():
    """lambda = 0.3: loss = BCE + 0.3 * REG and d loss_i / d z_i = p_i - y_i + 0.3 * g_i (eq. 4), for the
    loss built directly, through build_loss, and as train.json builds its ``loss`` with ``nvum#reg_weight``
    0.3 (MONAI's ConfigParser; the memory given as an object): a config that stops passing
    ``reg_weight`` to the loss builds lambda = 1 and fails here."""
    from custom.tools.training import train_parser

    torch.manual_seed(2)
    n = 6
    mem = _memory(n, torch.randn(n, C) * 2, dtype=torch.float64)
    z0 = torch.randn(n, C, dtype=torch.float64)
    y = (torch.rand(n, C) > 0.5).double()
    p = torch.sigmoid(z0)
    t = mem.values
    # by hand: BCE summed over classes and REG = log(1 - sigmoid(t . p)), both averaged over the batch
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).sum(1).mean()
    reg = torch.log(1 - torch.sigmoid((t * p).sum(1))).mean()
    g = -torch.sigmoid((t * p).sum(1, keepdim=True)) * p * (1 - p) * t
    built = build_loss("nvum", mem, reg_weight=0.3, reg="dot", class_reduction=None)
    configured = train_parser({"nvum#reg_weight": 0.3, "memory": mem}).get_parsed_content("loss")
    assert isinstance(configured, NVUMLoss) and configured.memory is mem
    for loss in (NVUMLoss(mem, reg="dot", reg_weight=0.3), built, configured):
        assert loss.reg_weight == 0.3
        z = z0.clone().requires_grad_(True)
        out = loss(z, y, torch.arange(n))
        assert torch.allclose(out["bce"], bce, rtol=1e-12) and torch.allclose(out["reg"], reg, rtol=1e-12)
        assert torch.allclose(out["loss"], bce + 0.3 * reg, rtol=1e-12)
        assert not torch.allclose(out["loss"], bce + reg)  # lambda = 1 would give another value
        (grad,) = torch.autograd.grad(out["loss"] * n, z)  # undo the batch mean
        assert torch.allclose(grad, p - y + 0.3 * g, rtol=1e-9, atol=1e-12)
        assert not torch.allclose(grad, p - y + g, rtol=1e-6, atol=1e-9)


def test_reg_with_zero_memory_is_log_half_for_every_sample():
    mem = _memory(4)
    for form in ("dot", "elementwise"):
        reg = NVUMLoss(mem, reg=form).per_image_reg(torch.randn(4, C) * 10, torch.arange(4))
        assert torch.allclose(reg, torch.full((4,), math.log(0.5)))


def test_reg_is_finite_for_large_memory_in_float32():
    mem = _memory(4, torch.full((4, C), 100.0))
    z = torch.full((4, C), 20.0, requires_grad=True)
    for form in ("dot", "elementwise"):
        reg = NVUMLoss(mem, reg=form).per_image_reg(z, torch.arange(4))
        assert torch.isfinite(reg).all()
        # (the naive log(1 - sigmoid(s)) is -inf at s = 100 * C; the stable form is ~ -s)
        (g,) = torch.autograd.grad(reg.sum(), z)
        assert torch.isfinite(g).all()


def test_log1m_sigmoid_matches_naive_form_where_that_is_accurate():
    s = torch.linspace(-10, 10, 101, dtype=torch.float64)
    assert torch.allclose(log1m_sigmoid(s), torch.log(1 - torch.sigmoid(s)), atol=1e-12)


def test_elementwise_reg_pairs_with_class_mean_bce_and_clamps():
    mem = _memory(3, torch.randn(3, C))
    loss = NVUMLoss(mem, reg="elementwise", clamp=1e-4)
    assert loss.bce.class_reduction == "mean"
    z = torch.tensor([[50.0, -50.0, 0.0, 1.0, -1.0]] * 3)
    p = torch.sigmoid(z).clamp(1e-4, 1 - 1e-4)
    expected = (-F.softplus(mem.values * p)).mean(1)
    assert torch.allclose(loss.per_image_reg(z, torch.arange(3)), expected)


def test_detach_reg_stops_gradient_of_reg_only():
    mem = _memory(2, torch.randn(2, C))
    z = torch.randn(2, C, requires_grad=True)
    y = torch.zeros(2, C)
    detached = NVUMLoss(mem, detach_reg=True)(z, y, torch.arange(2))
    (g_detached,) = torch.autograd.grad(detached["loss"], z)
    (g_bce,) = torch.autograd.grad(BCELoss(class_reduction="sum")(z, y)["loss"], z)
    assert torch.allclose(g_detached, g_bce)
    (g_full,) = torch.autograd.grad(NVUMLoss(mem)(z, y, torch.arange(2))["loss"], z)
    assert not torch.allclose(g_full, g_bce)


def test_prior_in_bce_and_reg_shift_the_logits_by_log_prior():
    mem = _memory(2, torch.randn(2, C))
    z = torch.randn(2, C)
    y = (torch.rand(2, C) > 0.5).float()
    shifted = z + mem.log_prior
    both = NVUMLoss(mem, prior_in_bce=True, prior_in_reg=True)(z, y, torch.arange(2))
    plain = NVUMLoss(mem)(shifted, y, torch.arange(2))
    assert torch.allclose(both["loss"], plain["loss"])
    la = build_loss("logit_adjusted_bce", mem)(z, y)
    assert torch.allclose(la["loss"], BCELoss(class_reduction="sum")(shifted, y)["loss"])


def test_loss_does_not_modify_the_memory():
    mem = _memory(4, torch.randn(4, C))
    before = mem.values.clone()
    NVUMLoss(mem, mix_memory=True)(torch.randn(4, C), torch.ones(4, C), torch.arange(4))["loss"]
    assert torch.equal(mem.values, before)


def test_memory_mixing_uses_a_convex_combination_of_batch_rows():
    torch.manual_seed(3)
    rows = torch.tensor([[1.0] * C, [3.0] * C])
    mem = _memory(2, rows)
    reg = NVUMLoss(mem, reg="dot", mix_memory=True).per_image_reg(torch.zeros(2, C), torch.arange(2))
    # p = 0.5 everywhere, so s = 0.5 * C * (mixed row value); the mixed value lies in [1, 3]
    s = torch.log(torch.expm1(-reg))
    mixed = s / (0.5 * C)
    assert ((mixed >= 1 - 1e-5) & (mixed <= 3 + 1e-5)).all()
    assert torch.allclose(mixed.sum(), torch.tensor(4.0), atol=1e-4)  # lam*a+(1-lam)*b + lam*b+(1-lam)*a


def test_focal_loss_equals_bce_when_gamma_is_zero_and_down_weights_easy_examples():
    z = torch.tensor([[4.0, -4.0, 0.5]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none").sum()
    assert torch.allclose(FocalLoss(gamma=0.0)(z, y)["loss"], bce)
    focal = FocalLoss(gamma=2.0, class_reduction="sum")
    per_class = [float(focal(z[:, [c]], y[:, [c]])["loss"]) for c in range(3)]
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")[0]
    assert per_class[0] / float(ce[0]) < 0.01 and per_class[2] / float(ce[2]) > 0.3


def test_build_loss_by_name_and_errors():
    mem = _memory(2)
    assert isinstance(build_loss("nvum", mem, reg="elementwise"), NVUMLoss)
    bce = build_loss("bce", mem, reg="dot", detach_reg=True)
    assert isinstance(bce, BCELoss) and not bce.prior_in_bce and bce.class_reduction == "sum"
    assert build_loss("logit_adjusted_bce", mem).prior_in_bce
    assert isinstance(build_loss("focal", mem), FocalLoss)
    with pytest.raises(ValueError, match="unknown loss name 'bcee'"):
        build_loss("bcee", mem)
    with pytest.raises(ValueError, match="needs each sample's dataset index"):
        NVUMLoss(mem)(torch.zeros(2, C), torch.zeros(2, C), None)
    with pytest.raises(ValueError, match="must both be"):
        NVUMLoss(mem)(torch.zeros(2, C), torch.zeros(2, C - 1), torch.arange(2))
