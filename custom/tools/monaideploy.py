"""The bundle's MONAI Deploy application run for real, checked against ``inference.json``.

``python -m custom.cli monaideploy --bundle_zip bundle/models/nvum_cxr_classification.zip \
--images "[png_dir, dcm_dir]"``

1. builds the MONAI Deploy App SDK's own environment when asked (``--install true``): a venv
   (default ``~/venv-monaideploy``) with the pins of ``monaideploy_requirements.txt`` (the SDK
   brings Holoscan, which runs on the CPU when no GPU is there);
2. unzips the bundle; for each folder of images (PNG or DICOM) runs ``python -m scripts.deploy_app
   -i <folder> -o <out> -m models/model.ts`` from the bundle folder in that environment, and
   ``inference.json`` in this one;
3. returns (and prints) the largest difference between the application's ``probabilities.json``
   and ``inference.json``'s probabilities, per folder, with the time each run took.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from ..files import read_json
from .monailabel import MODEL, reference_probabilities

#: where the MONAI Deploy environment is looked for (``$NVUM_MONAIDEPLOY_VENV`` overrides).
DEFAULT_VENV = Path(os.environ.get("NVUM_MONAIDEPLOY_VENV", Path.home() / "venv-monaideploy"))
REQUIREMENTS = Path(__file__).with_name("monaideploy_requirements.txt")
#: Holoscan asks for a 32 MB stack (it warns of crashes below that).
STACK_BYTES = 32 * 1024 * 1024


def venv_ready(venv=DEFAULT_VENV) -> bool:
    """Whether ``venv`` holds the MONAI Deploy App SDK and Holoscan."""
    site = list(Path(venv).glob("lib/python3*/site-packages"))
    return (
        (Path(venv) / "bin" / "python").is_file()
        and bool(site)
        and all((site[0] / pkg).is_dir() for pkg in ("holoscan", "monai/deploy"))
    )


def build_venv(venv=DEFAULT_VENV) -> float:
    """Create ``venv`` with the SDK's environment; returns the seconds it took."""
    start, venv = time.monotonic(), Path(venv)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + ["torch==2.13.0"], check=True)  # first, alone: the CPU wheel, not a CUDA build
    subprocess.run(pip + ["-r", str(REQUIREMENTS)], check=True)
    return time.monotonic() - start


def _bigger_stack():
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != resource.RLIM_INFINITY and soft < STACK_BYTES:
        resource.setrlimit(
            resource.RLIMIT_STACK, (STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard), hard)
        )


def run_app(bundle: Path, images: Path, output: Path, venv=DEFAULT_VENV) -> tuple[dict, dict, float]:
    """Run the bundle's ``scripts/deploy_app.py`` on ``images``; ``({file name: {class: p}}, {file name: reason it
    was left out, from the app's log}, seconds)``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = [
        str(Path(venv) / "bin" / "python"),
        "-m",
        "scripts.deploy_app",
        "-i",
        str(images),
        "-o",
        str(output),
        "-m",
        "models/model.ts",
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, preexec_fn=_bigger_stack)
    took = time.monotonic() - start
    (output.parent / f"{output.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"the MONAI Deploy application failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    left_out = {m.group(1): m.group(2) for m in re.finditer(re.escape(str(images)) + r"/(.+?): left out, (.*)$",
                                                             proc.stdout + proc.stderr, re.MULTILINE)}
    return read_json(output / "probabilities.json", "MONAI Deploy output"), left_out, took


def check(bundle_zip="bundle/models/nvum_cxr_classification.zip", images=(), work=None, venv=str(DEFAULT_VENV),
          install: bool = False) -> dict:
    """Run the application on each folder of ``images`` and compare with ``inference.json`` (module docstring).

    Returns:
        ``{"build_s": ..., "folders": {folder: {"images", "max_difference", "left_out", "app_s"}}}``; raises when the
        application scored or left out other files than inference.json scored or refused.
    """
    import tempfile

    import numpy as np

    from ..flags import as_bool

    build_s = 0.0
    if not venv_ready(venv):
        if not as_bool(install, "install"):
            raise FileNotFoundError(f"no MONAI Deploy environment at {venv}: run with --install true to build it")
        build_s = build_venv(venv)
    folders = [images] if isinstance(images, (str, Path)) else list(images)
    if not folders or not all(Path(f).is_dir() for f in folders):
        raise FileNotFoundError(f"give --images, one or more folders of PNG, JPEG or DICOM images (got {images})")
    work = Path(work or tempfile.mkdtemp(prefix="nvum-monaideploy-"))
    with zipfile.ZipFile(bundle_zip) as zf:
        zf.extractall(work)
    bundle, result = work / MODEL, {"build_s": round(build_s, 1), "folders": {}}
    for i, folder in enumerate(Path(f).resolve() for f in folders):
        reference, errors = reference_probabilities(bundle, folder, work / f"reference{i}.csv")
        served, left_out, took = run_app(bundle, folder, work / f"app{i}", venv)
        if sorted(served) != sorted(reference) or sorted(left_out) != sorted(errors):
            raise RuntimeError(f"the application answered for {sorted(served)} and left out {sorted(left_out)}; "
                               f"inference.json scored {sorted(reference)} and refused {sorted(errors)}")
        classes = list(next(iter(served.values())))
        diff = max(
            float(np.abs(np.array([served[n][c] for c in classes]) - np.array(reference[n])).max()) for n in served
        )
        result["folders"][str(folder)] = {"images": len(served), "max_difference": diff, "left_out": left_out,
                                          "app_s": round(took, 1)}
    print(json.dumps(result, indent=2))
    return result

