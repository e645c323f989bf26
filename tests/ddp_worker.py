"""Runs the training workflow of ``train.json`` + ``multi_gpu_train.json`` and saves, per rank,
the NVUM memory (and its update order) and the validation metric of each run, after checking the
gathering and BatchNorm primitives on a small fixed input (used by ``test_distributed.py``).

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR RUNS_JSON
    python tests/ddp_worker.py OUT_DIR RUNS_JSON        (one process: the reference)

``RUNS_JSON`` maps a run name to config overrides. The process group is left up between runs
and taken down at the end.
"""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


def primitives() -> dict:
    """Row gathering and global BatchNorm on rank-dependent inputs; see the test for the expected values."""
    from custom.nvum.gather import RowGatherer, all_gather_rows
    from custom.training.distributed import CPUSyncBatchNorm, rank, world_size

    me, ws = rank(), world_size()
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 3 + 1  # the global batch; each rank holds an equal part of it
    w = torch.randn(8, 3, 5, 5)
    part = slice(me * 8 // ws, (me + 1) * 8 // ws)
    # uneven rows: rank 0 gives 3 rows, the others 1
    rows = all_gather_rows(torch.arange(3) if me == 0 else torch.tensor([10 * me]))
    # memory rows of three steps; step 2 repeats index 1 (as DistributedSampler's padding does)
    gatherer = RowGatherer(num_rows=6)
    steps = [
        gatherer(torch.tensor([[1, 3][me]]), torch.full((1, 2), float(me)), epoch=1),
        gatherer(torch.tensor([[5, 1][me]]), torch.full((1, 2), 10.0 + me), epoch=1),
        gatherer(torch.tensor([[1, 3][me]]), torch.full((1, 2), 20.0 + me), epoch=2),
    ]
    bn = CPUSyncBatchNorm(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    xr = x[part].clone().requires_grad_(True)
    # the global loss is the mean over the ranks' losses, as DDP averages the gradients
    ((bn(xr) * w[part]).sum() / ws).backward()
    weight_grad = bn.weight.grad.clone()
    torch.distributed.all_reduce(weight_grad)
    return {
        "rows": rows, "steps": steps, "x_grad": xr.grad, "weight_grad": weight_grad,
        "running_mean": bn.running_mean.clone(), "running_var": bn.running_var.clone(),
    }


def run_all(out_dir, runs: dict) -> dict:
    from monai.bundle import ConfigWorkflow

    from custom.training import distributed

    results = {}
    if distributed.init_process_group() > 1:
        results["primitives"] = primitives()
    for name, override in runs.items():
        wf = ConfigWorkflow(
            config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")],
            meta_file=str(CONFIGS / "metadata.json"),
            logging_file=str(CONFIGS / "logging.conf"),
            workflow_type="train",
            **override,
        )
        wf.initialize()
        wf.run()
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        trainer = wf.parser.get_parsed_content("train#trainer")
        memory = wf.parser.get_parsed_content("memory")
        results[name] = {
            "memory": memory.values.detach().cpu().clone(),
            "before_loss": wf.parser.get_parsed_content("memory_updater").before_loss,  # the update order the run used
            "val_mean_auc": float(evaluator.state.metrics["val_mean_auc"]),
            "train_loss": float(trainer.state.metrics["train_loss"]),
            "world_size": distributed.world_size(),
            "ddp": isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel),
        }
    torch.save(results, Path(out_dir) / f"rank{distributed.rank()}.pt")
    distributed.destroy_process_group()
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    run_all(sys.argv[1], json.loads(Path(sys.argv[2]).read_text()))
