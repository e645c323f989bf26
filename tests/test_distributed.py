"""Data-parallel training: memory gathering, global BatchNorm, and a two-process run on CPU (gloo)
that must reproduce a one-process run with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from conftest import ROOT
from custom.nvum.gather import first_unseen
from custom.training.distributed import CPUSyncBatchNorm, convert_batchnorm

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


def test_first_unseen_keeps_the_first_occurrence_of_each_index_once_per_epoch():
    seen = torch.zeros(10, dtype=torch.bool)
    keep = first_unseen(torch.tensor([4, 2, 4, 7]), seen)
    assert keep.tolist() == [0, 1, 3]
    assert seen.nonzero().flatten().tolist() == [2, 4, 7]
    # a later step of the same epoch: 2 (a padding repeat) is dropped, 5 is new
    keep = first_unseen(torch.tensor([5, 2]), seen)
    assert keep.tolist() == [0]


def test_convert_batchnorm_keeps_parameters_and_state_dict_keys():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    with torch.no_grad():
        net[1].weight.uniform_()
        net[1].running_mean.uniform_()
    weight = net[1].weight
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = convert_batchnorm(net, True, "cpu")
    assert out is net and isinstance(net[1], CPUSyncBatchNorm) and net[1].weight is weight
    assert net.state_dict().keys() == before.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert convert_batchnorm(torch.nn.BatchNorm1d(3), "false", "cpu").__class__ is torch.nn.BatchNorm1d


def _check_primitives(r0, r1):
    """Expected results of ``ddp_worker.primitives`` on ranks 0 and 1."""
    assert r0["rows"].tolist() == r1["rows"].tolist() == [0, 1, 2, 10]
    for (i0, l0), (i1, l1) in zip(r0["steps"], r1["steps"]):
        assert torch.equal(i0, i1) and torch.equal(l0, l1)
    (i1, l1), (i2, l2), (i3, _) = r0["steps"]
    assert i1.tolist() == [1, 3] and l1[:, 0].tolist() == [0.0, 1.0]
    assert i2.tolist() == [5] and l2[:, 0].tolist() == [10.0]  # index 1 was already given in epoch 1
    assert i3.tolist() == [1, 3]  # a new epoch starts afresh
    # one process, plain BatchNorm, the whole batch
    torch.manual_seed(0)
    x = (torch.randn(8, 3, 5, 5) * 3 + 1).requires_grad_(True)
    w = torch.randn(8, 3, 5, 5)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    ((bn(x) * w).sum() / 2).backward()
    assert torch.allclose(torch.cat([r0["x_grad"], r1["x_grad"]]), x.grad, atol=1e-5)
    assert torch.allclose(r0["weight_grad"], bn.weight.grad, atol=1e-4)
    for r in (r0, r1):
        assert torch.allclose(r["running_mean"], bn.running_mean, atol=1e-6)
        assert torch.allclose(r["running_var"], bn.running_var, atol=1e-5)


TINY = {
    "datalist#num_training": 64,
    "datalist#num_validation": 33,  # odd: the validation shards differ in size
    "datalist#num_test": 32,
    "datalist#num_test_shifted": 32,
    "max_epochs": 2,
    "batch_size": 16,  # the global batch: 8 per rank with 2 processes
    "mlflow": False,
    # random flips are drawn per process: off, so that both runs see the same images
    "train#preprocessing#transforms#3#prob": 0.0,
    "network_def": {
        "_target_": "DenseNet",
        "spatial_dims": 2,
        "in_channels": 3,
        "out_channels": 14,
        "init_features": 8,
        "growth_rate": 8,
        "block_config": [2, 2],
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("update_before_loss", [True, False], ids=["paper_order", "epoch_end_order"])
def test_torchrun_two_processes_keep_one_memory_equal_to_a_single_process_run(tmp_path, update_before_loss):
    """``torchrun --nproc_per_node=2`` (gloo) on the overlay: both ranks end with the same memory,
    equal (1e-5) to one process with the same global batch, for both memory schedules and both update
    orders: before the loss (each step's gathered rows written at once) and after (the epoch schedule
    collects the gathered rows and writes them at the end of the epoch; the iteration schedule
    writes them after the optimiser step). The same processes first check the primitives: row
    gathering and BatchNorm over the global batch."""
    from custom.data.synthetic import ensure_synthetic

    data = tmp_path / "data"
    ensure_synthetic(data, seed=0, num_training=64, num_validation=33, num_test=32, num_test_shifted=32, image_size=32)
    order = {"nvum#update_before_loss": update_before_loss}
    runs = {
        "epoch": dict(TINY, **order, **{"datalist#root": str(data)}),
        "iteration_teacher": dict(
            TINY,
            **order,
            **{
                "nvum#memory_schedule": "iteration",
                "nvum#use_teacher": True,
                "nvum#reg": "elementwise",
                "datalist#root": str(data),
            },
        ),
    }
    for who in ("ddp", "single"):
        (tmp_path / who).mkdir()
    for name, override in runs.items():
        override["bundle_root"] = str(tmp_path / "ddp" / name)
    spec = tmp_path / "runs.json"
    spec.write_text(json.dumps(runs))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "tests" / "ddp_worker.py"),
        str(tmp_path / "ddp"),
        str(spec),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    sys.path.insert(0, str(ROOT / "tests"))
    from ddp_worker import run_all

    for override in runs.values():
        override["bundle_root"] = override["bundle_root"].replace(str(tmp_path / "ddp"), str(tmp_path / "single"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_all(tmp_path / "single", runs)
    finally:
        torch.set_num_threads(threads)
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=False)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=False)
    # gathering (uneven rows, padding repeats) and global BatchNorm (values and gradients)
    _check_primitives(rank0["primitives"], rank1["primitives"])
    for name in runs:
        assert rank0[name]["world_size"] == 2 and rank0[name]["ddp"] and single[name]["world_size"] == 1
        assert rank0[name]["before_loss"] is single[name]["before_loss"] is update_before_loss
        assert torch.equal(rank0[name]["memory"], rank1[name]["memory"]), name
        assert (rank0[name]["memory"].abs().sum(dim=1) > 0).all()  # every image was seen
        assert torch.allclose(rank0[name]["memory"], single[name]["memory"], atol=1e-5, rtol=0), name
        # validation metric gathered over both (uneven) shards = the one-process metric
        assert rank0[name]["val_mean_auc"] == rank1[name]["val_mean_auc"]
        assert abs(rank0[name]["val_mean_auc"] - single[name]["val_mean_auc"]) < 1e-6
        assert abs(rank0[name]["train_loss"] - single[name]["train_loss"]) < 1e-4
    # the checkpoints and the test report of the two-process run
    assert (tmp_path / "ddp" / "epoch" / "models" / "model.pt").is_file()
    assert (tmp_path / "ddp" / "epoch" / "models" / "model.json").is_file()  # written once, by rank 0
    assert (tmp_path / "ddp" / "epoch" / "eval" / "test_test.csv").is_file()
