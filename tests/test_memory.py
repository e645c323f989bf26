"""NVUM memory: priors against hand counts, and the EMA update in both schedules by hand."""

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from custom.data.datalist import INDEX_KEY
from custom.nvum.memory import MemoryUpdater
from custom.nvum.teacher import EMATeacher
from custom.nvum.memory import NVUMMemory, class_prior

CLASSES = ["A", "B", "No Finding"]
# 5 images: counts A=2, B=1, NF=2
LABELS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]])


def test_frequency_prior_is_the_label_mean():
    assert torch.allclose(class_prior(LABELS, CLASSES, "frequency"), torch.tensor([2 / 5, 1 / 5, 2 / 5]))


def test_no_finding_scaled_prior_matches_hand_count():
    # pi(NF) = 2/5; pi(c) = (1 - 2/5) * freq(c)
    expected = torch.tensor([0.6 * 2 / 5, 0.6 * 1 / 5, 2 / 5])
    assert torch.allclose(class_prior(LABELS, CLASSES, "no_finding_scaled"), expected)


def test_prior_errors_and_empty_class_floor():
    with pytest.raises(ValueError, match="No Finding"):
        class_prior(LABELS[:, :2], ["A", "B"], "no_finding_scaled")
    with pytest.raises(ValueError, match="unknown prior method"):
        class_prior(LABELS, CLASSES, "uniform")
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        class_prior(LABELS, ["A", "B"])
    with pytest.warns(UserWarning, match="without positive"):
        prior = class_prior(np.zeros((4, 3)), CLASSES)
    assert torch.allclose(prior, torch.full((3,), 0.5 / 4))


def test_memory_starts_at_zero_float32_with_n_by_c_bytes():
    mem = NVUMMemory(7, [0.5, 0.25, 0.1])
    assert mem.values.dtype == torch.float32 and mem.values.shape == (7, 3)
    assert mem.values.abs().sum() == 0
    # the buffers only: the updater's state is saved by the updater (train.json's checkpoint_objects)
    assert set(mem.state_dict()) == {"values", "log_prior"}


def test_update_matches_hand_computation():
    prior = [0.5, 0.25, 0.1]
    mem = NVUMMemory(4, prior, momentum=0.9)
    z1 = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0]])
    mem.update(torch.tensor([1, 3]), z1)
    # t = 0.9 * 0 + 0.1 * (z - log pi)
    for row, i in enumerate([1, 3]):
        for c in range(3):
            assert math.isclose(mem.values[i, c].item(), 0.1 * (z1[row, c].item() - math.log(prior[c])), rel_tol=1e-6)
    assert mem.values[[0, 2]].abs().sum() == 0
    before = mem.values[1].clone()
    z2 = torch.tensor([[0.5, 0.5, 0.5]])
    mem.update(torch.tensor([1]), z2)
    for c in range(3):
        hand = 0.9 * before[c].item() + 0.1 * (0.5 - math.log(prior[c]))
        assert math.isclose(mem.values[1, c].item(), hand, rel_tol=1e-6)


def test_biased_memory_stores_plain_logits():
    mem = NVUMMemory(2, [0.5, 0.1], momentum=0.5, unbiased=False)
    mem.update(torch.tensor([0]), torch.tensor([[2.0, 4.0]]))
    assert torch.allclose(mem.values[0], torch.tensor([1.0, 2.0]))


def test_memory_rejects_bad_input():
    with pytest.raises(ValueError, match="momentum"):
        NVUMMemory(2, [0.5], momentum=1.5)
    with pytest.raises(ValueError, match="prior"):
        NVUMMemory(2, [0.0, 0.5])
    mem = NVUMMemory(3, [0.5, 0.5])
    with pytest.raises(IndexError, match="3 training images"):
        mem(torch.tensor([3]))


def _fake_training(memory_updater, batches, teacher=None, epochs=1):
    """Run an engine whose output mimics NVUMTrainer's: image, pred, index."""

    def step(engine, batch):
        return {"image": batch["image"], "pred": batch["pred"], INDEX_KEY: batch["index"]}

    engine = Engine(step)
    if teacher is not None:
        teacher.attach(engine)
    memory_updater.attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(memory_updater.memory.values.clone()))
    engine.run(batches, max_epochs=epochs)
    return seen


def test_epoch_schedule_updates_once_at_epoch_end_with_collected_logits():
    prior = [0.5, 0.2]
    mem = NVUMMemory(4, prior, momentum=0.9)
    batches = [
        {"image": torch.zeros(2, 1), "pred": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "index": torch.tensor([2, 0])},
        {"image": torch.zeros(1, 1), "pred": torch.tensor([[5.0, 6.0]]), "index": torch.tensor([3])},
    ]
    during = _fake_training(MemoryUpdater(mem, "epoch"), batches)
    assert all(v.abs().sum() == 0 for v in during)  # nothing written during the epoch
    log_prior = torch.log(torch.tensor(prior))
    expected = torch.zeros(4, 2)
    expected[2] = 0.1 * (torch.tensor([1.0, 2.0]) - log_prior)
    expected[0] = 0.1 * (torch.tensor([3.0, 4.0]) - log_prior)
    expected[3] = 0.1 * (torch.tensor([5.0, 6.0]) - log_prior)
    assert torch.allclose(mem.values, expected)  # row 1 not seen: untouched


def test_epoch_schedule_over_two_epochs_compounds_the_ema():
    mem = NVUMMemory(1, [0.5], momentum=0.9)
    batches = [{"image": torch.zeros(1, 1), "pred": torch.tensor([[2.0]]), "index": torch.tensor([0])}]
    _fake_training(MemoryUpdater(mem, "epoch"), batches, epochs=2)
    target = 2.0 - math.log(0.5)
    assert math.isclose(mem.values[0, 0].item(), (1 - 0.9**2) * target, rel_tol=1e-6)


def test_iteration_schedule_uses_the_ema_teacher_logits_after_each_step():
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    teacher = EMATeacher(student, decay=0.99)
    with torch.no_grad():  # make the teacher differ from the student
        for p in teacher.model.parameters():
            p.add_(1.0)
    mem = NVUMMemory(3, [0.5, 0.25], momentum=0.9)
    images = torch.randn(2, 3)
    batches = [{"image": images, "pred": torch.full((2, 2), 100.0), "index": torch.tensor([0, 2])}]
    teacher_before = [p.clone() for p in teacher.model.parameters()]
    during = _fake_training(MemoryUpdater(mem, "iteration", teacher=teacher), batches, teacher=teacher)
    # teacher updated first (EMA of weights, decay 0.99), then the memory from its logits
    w, b = [0.99 * tp + 0.01 * sp for tp, sp in zip(teacher_before, student.parameters())]
    z = images @ w.T + b
    expected = 0.1 * (z - torch.log(torch.tensor([0.5, 0.25])))
    assert torch.allclose(during[0][[0, 2]], expected, atol=1e-6)
    assert during[0][1].abs().sum() == 0


def test_iteration_schedule_without_teacher_uses_the_step_logits():
    mem = NVUMMemory(2, [0.5, 0.5], momentum=0.5)
    batches = [{"image": torch.zeros(1, 1), "pred": torch.tensor([[1.0, -1.0]]), "index": torch.tensor([1])}]
    _fake_training(MemoryUpdater(mem, "iteration"), batches)
    assert torch.allclose(mem.values[1], 0.5 * (torch.tensor([1.0, -1.0]) - math.log(0.5)))


def test_disabled_updater_and_teacher_leave_everything_untouched():
    mem = NVUMMemory(1, [0.5])
    student = torch.nn.Linear(1, 1)
    teacher = EMATeacher(student, use=False)
    assert teacher.model is None and teacher.eval_network is student
    batches = [{"image": torch.zeros(1, 1), "pred": torch.tensor([[1.0]]), "index": torch.tensor([0])}]
    _fake_training(MemoryUpdater(mem, "epoch", enabled=False), batches, teacher=teacher)
    assert mem.values.abs().sum() == 0


def test_teacher_includes_batchnorm_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    teacher = EMATeacher(net, decay=0.5)
    engine = Engine(lambda e, b: net.train() or net(b))
    teacher.attach(engine)
    engine.run([torch.randn(8, 2) + 10.0], max_epochs=1)
    student_mean = net[1].running_mean
    teacher_mean = teacher.model[1].running_mean
    assert torch.allclose(teacher_mean, 0.5 * torch.zeros(2) + 0.5 * student_mean)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="schedule"):
        MemoryUpdater(NVUMMemory(1, [0.5]), "batch")


def _first_epoch_with_spy(before_loss: bool, steps: int = 2, batch: int = 4, classes: int = 3):
    """One epoch of the real trainer, recording at each step the logits the loss saw and the
    gradient of the regulariser with respect to them."""
    from custom.nvum.losses import NVUMLoss
    from custom.training.engine import NVUMTrainer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, classes))
    prior = torch.tensor([0.2, 0.3, 0.5])
    memory = NVUMMemory(steps * batch, prior)
    nvum = NVUMLoss(memory)
    seen = []

    def loss(logits, target, index):
        probe = logits.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(nvum.per_image_reg(probe, index).mean(), probe)
        seen.append((index.clone(), logits.detach().clone(), float(grad.abs().max())))
        return nvum(logits, target, index)

    g = torch.Generator().manual_seed(1)
    batches = [
        {
            "image": torch.randn(batch, 3, 2, 2, generator=g),
            "label": (torch.rand(batch, classes, generator=g) < 0.4).float(),
            INDEX_KEY: torch.arange(i * batch, (i + 1) * batch),
        }
        for i in range(steps)
    ]
    trainer = NVUMTrainer(device="cpu", max_epochs=1, train_data_loader=batches, network=net,
                          optimizer=torch.optim.SGD(net.parameters(), 0.1), loss_function=loss, decollate=False,
                          train_handlers=[MemoryUpdater(memory, "epoch", before_loss=before_loss)])
    trainer.run()
    return memory, prior, seen


def test_paper_order_updates_each_row_before_the_loss_so_reg_has_a_gradient_in_epoch_one():
    memory, prior, seen = _first_epoch_with_spy(before_loss=True)
    assert all(grad > 1e-6 for _, _, grad in seen)  # eq. 3 then minimise: the regulariser pulls from the first step
    expected = torch.zeros_like(memory.values)
    for index, logits, _ in seen:  # one update per image, with the logits of its visit (hand computation of eq. 3)
        expected[index] = 0.1 * (logits - torch.log(prior))
    assert torch.allclose(memory.values, expected, atol=1e-6)


def test_epoch_end_order_leaves_reg_without_gradient_in_epoch_one():
    memory, prior, seen = _first_epoch_with_spy(before_loss=False)
    assert all(grad == 0 for _, _, grad in seen)  # the memory read in epoch 1 is all zeros: REG = -log 2, constant
    assert (memory.values.abs().sum(dim=1) > 0).all()  # updated at the end of the epoch


def test_teacher_halflife_sets_the_decay_from_the_epoch_length():
    """decay = 0.5 ** (1 / (halflife_epochs * steps_per_epoch)), with the engine's epoch length (5
    and 12 steps here), and the teacher moves by exactly that decay per step."""
    # steps per epoch, halflife in epochs, decay = 0.5 ** (1 / 5) and 0.5 ** (1 / 24), teacher after one epoch:
    # the teacher starts at 1, the student stays at 3, so after n steps the teacher is 3 - 2 * decay ** n:
    # 5 steps of a 1-epoch half-life leave half the distance (3 - 1 = 2); 12 steps of a 2-epoch one 2 * 0.5 ** 0.5
    cases = ((5, 1.0, 0.8705505632961241, 2.0), (12, 2.0, 0.9715319411536059, 1.5857864376269049))
    for steps, halflife, decay, after in cases:
        net = torch.nn.Linear(2, 1, bias=False)
        teacher = EMATeacher(net, decay=0.99, halflife_epochs=halflife)
        with torch.no_grad():
            teacher.model.weight.fill_(1.0)
            net.weight.fill_(3.0)  # no optimiser step: the student stays where it is
        engine = Engine(lambda e, b: None)
        teacher.attach(engine)
        engine.run(range(steps), max_epochs=1)
        assert math.isclose(teacher.decay, decay, rel_tol=1e-12), steps
        assert torch.allclose(teacher.model.weight, torch.full((1, 2), after), atol=1e-6, rtol=0), steps
