"""Shared test setup: the repository root on ``sys.path`` (configs import ``custom``)."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "bundle" / "configs"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write the synthetic data cache or MLflow stores outside pytest's temporary folders."""
    monkeypatch.setenv("NVUM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nvum-cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("PYTHONHASHSEED", "0")
