"""Mixed precision and channels-last: switchable from the config, and the loss and memory stay float32."""

import copy

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader

from conftest import CONFIGS
from custom.training.engine import NVUMTrainer
from custom.nvum.memory import MemoryUpdater
from custom.nvum.losses import build_loss
from custom.nvum.memory import NVUMMemory
from custom.networks import memory_format, prepare_network


def test_prepare_network_stores_weights_channels_last_on_request():
    net = prepare_network(torch.nn.Conv2d(3, 4, 3), "cpu", "", channels_last="true")
    assert net.weight.is_contiguous(memory_format=torch.channels_last)
    net = prepare_network(torch.nn.Conv2d(3, 4, 3), "cpu", "", channels_last="false")
    assert net.weight.is_contiguous() and not net.weight.is_contiguous(memory_format=torch.channels_last)
    assert memory_format("false") == torch.contiguous_format and memory_format(True) == torch.channels_last
    assert memory_format("auto", "cpu") == torch.contiguous_format
    assert memory_format("auto", "cuda") == torch.channels_last
    with pytest.raises(ValueError, match="channels_last"):
        memory_format("maybe")


@pytest.mark.parametrize("flag", ["true", "false", "auto"])
def test_train_config_switches_amp_and_channels_last(flag, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"amp": flag, "channels_last": flag, "mlflow": "false", "bundle_root": str(tmp_path),
                   "datalist#root": str(tmp_path / "data"), "datalist#num_training": 8, "datalist#num_validation": 4,
                   "datalist#num_test": 4, "datalist#num_test_shifted": 4})
    net = parser.get_parsed_content("network")
    on = flag == "true"  # "auto" (the default) is on with a CUDA device only: off here
    assert net.features.conv0.weight.is_contiguous(memory_format=torch.channels_last) == on
    # the command-line string "false" must switch mixed precision off, not on
    assert parser.get_parsed_content("train#trainer").amp is on
    assert parser.get_parsed_content("test_report").amp is on
    assert parser.get_parsed_content("validate#evaluator").amp is False  # validation runs in float32


def test_loss_and_memory_stay_float32_under_mixed_precision():
    """AMP on the CPU (bfloat16 autocast): the logits are low precision, the loss and memory are not."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5)
    )
    memory = NVUMMemory(8, torch.full((5,), 0.2))
    seen = {}

    class Spy:
        def __init__(self, loss):
            self.loss = loss

        def __call__(self, logits, labels, index):
            seen["logits"] = logits.dtype
            out = self.loss(logits, labels, index)
            seen["loss"] = out["loss"].dtype
            return out

    batches = [
        {
            "image": torch.randn(4, 3, 8, 8),
            "label": (torch.rand(4, 5) < 0.3).float(),
            "index": torch.arange(i * 4, i * 4 + 4),
        }
        for i in range(2)
    ]
    trainer = NVUMTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.1),
        loss_function=Spy(build_loss("nvum", memory)),
        decollate=False,
        amp=True,
        amp_kwargs={"dtype": torch.bfloat16},
        train_handlers=[MemoryUpdater(memory, "iteration")],
    )
    trainer.scaler = None  # bfloat16 needs no gradient scaling (MONAI's scaler is a CUDA one)
    trainer.run()
    assert trainer.state.output["pred"].dtype == torch.bfloat16  # the forward pass did run in low precision
    assert seen == {"logits": torch.float32, "loss": torch.float32}
    assert memory.values.dtype == torch.float32 and (memory.values.abs().sum(dim=1) > 0).all()


def test_training_cache_holds_resized_images_and_the_augmentation_leaves_it_intact(tmp_path):
    """train.json caches decoded, resized images once and augments copies of them every epoch;
    ``copy_cache: false`` (no defensive copy per item, twice the speed) is safe only while the
    random transforms never write into the cached tensors."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(
        {
            "datalist#root": str(tmp_path / "data"),
            "datalist#num_training": 12,
            "datalist#num_validation": 4,
            "datalist#num_test": 4,
            "datalist#num_test_shifted": 4,
            "random_affine_prob": 1.0,
            "train#preprocessing#transforms#3#prob": 1.0,
        }
    )
    dataset = parser.get_parsed_content("train#dataset")
    assert dataset.copy_cache is False
    cached = dataset._cache[0]["image"]
    # the cache holds the deterministic head of the chain: decoded, grey, resized, normalised
    items = parser.get_parsed_content("data").items("training")
    expected = parser.get_parsed_content("validate#preprocessing")(items[0])["image"]
    assert cached.shape == (3, 32, 32) and torch.equal(cached.as_tensor(), expected.as_tensor())
    before = copy.deepcopy(dataset._cache)
    for _ in range(2):
        for _batch in DataLoader(dataset, batch_size=4):
            pass
    served = dataset[0]["image"]
    assert not torch.equal(served.as_tensor(), cached.as_tensor())  # the augmentation ran, on a copy
    for old, new in zip(before, dataset._cache):
        assert torch.equal(old["image"].as_tensor(), new["image"].as_tensor())
        assert len(new["image"].applied_operations) == len(old["image"].applied_operations)
