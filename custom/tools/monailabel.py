"""A real MONAI Label server on the deployable bundle, checked against ``inference.json``.

``python -m custom.cli monailabel --bundle_zip bundle/models/nvum_cxr_classification.zip --images <PNG folder>``

1. builds MONAI Label's own environment when asked (``--install true``): a venv (default
   ``~/venv-monailabel``) with the pins of ``monailabel_requirements.txt`` (MONAI Label 0.8.5 needs
   ``numpy<2``, pydicom 2 and torchvision, so it cannot share this project's environment);
2. unzips the bundle and copies its MONAI Label app (``scripts/monailabel_app``) into a work folder;
3. computes the reference: ``inference.json`` of the unzipped bundle, in this environment;
4. starts ``monailabel start_server`` on 127.0.0.1 with the images as the studies folder, calls
   ``POST /infer/nvum_cxr_classification?image=<id>&output=json`` for every image, stops the server;
5. returns (and prints) the largest difference between the served and the reference probabilities,
   with the time each step took.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

#: where the MONAI Label environment is looked for (``$NVUM_MONAILABEL_VENV`` overrides).
DEFAULT_VENV = Path(os.environ.get("NVUM_MONAILABEL_VENV", Path.home() / "venv-monailabel"))
REQUIREMENTS = Path(__file__).with_name("monailabel_requirements.txt")
MODEL = "nvum_cxr_classification"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def venv_ready(venv=DEFAULT_VENV) -> bool:
    """Whether ``venv`` has MONAI Label's command and can import it."""
    venv = Path(venv)
    return (venv / "bin" / "monailabel").is_file() and (venv / "bin" / "python").is_file()


def build_venv(venv=DEFAULT_VENV) -> float:
    """Create ``venv`` and install MONAI Label's environment into it; returns the seconds it took.

    The torch and torchvision pins are releases that pip takes from this machine's disk where they
    lie there (elsewhere from PyPI); MONAI Label itself is installed without its dependency list,
    which asks for packages not needed to serve a classification bundle (sam2, numpymaxflow, ninja)
    and unpinned torchvision (a CUDA build of several GB).
    """
    start, venv = time.monotonic(), Path(venv)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + ["-r", str(REQUIREMENTS)], check=True)
    subprocess.run(pip + ["--no-deps", "monailabel==0.8.5"], check=True)
    return time.monotonic() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET", timeout: float = 300):
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def reference_probabilities(bundle: Path, images: Path, output: Path) -> dict[str, list[float]]:
    """``{image file name: probabilities}`` from the unzipped bundle's ``inference.json`` (this environment)."""
    import pandas as pd

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--input_path",
        str(images),
        "--output_file",
        str(output),
    ]
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"inference.json failed in {bundle}:\n{proc.stderr[-3000:]}")
    table = pd.read_csv(output)
    return {Path(p).name: row.tolist() for p, row in zip(table.pop("image"), table.to_numpy())}


def serve_and_compare(bundle: Path, images: Path, work: Path, venv=DEFAULT_VENV, timeout: float = 600) -> dict:
    """Start MONAI Label on ``images`` with the app serving ``bundle``; probabilities of every image.

    Returns:
        ``{"probabilities": {file name: [p, ...]}, "start_s": ..., "infer_s": [...], "log": path}``.
    """
    app = work / "app"
    shutil.copytree(bundle / "scripts" / "monailabel_app", app, dirs_exist_ok=True)
    port, log_path = _free_port(), work / "monailabel.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{Path(venv) / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # its start script runs `python`
    cmd = [
        str(Path(venv) / "bin" / "monailabel"),
        "start_server",
        "--app",
        str(app),
        "--studies",
        str(images),
        "--conf",
        "bundle",
        str(bundle),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    base, start = f"http://127.0.0.1:{port}", time.monotonic()
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"monailabel exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    info = _request(f"{base}/info/", timeout=5)
                    break
                except OSError:
                    if time.monotonic() - start > timeout:
                        raise TimeoutError(f"MONAI Label did not answer in {timeout:.0f} s; see {log_path}") from None
                    time.sleep(1)
            if MODEL not in info.get("models", {}):
                raise RuntimeError(f"MONAI Label serves {list(info.get('models', {}))}, not {MODEL}; see {log_path}")
            started = time.monotonic() - start
            probabilities, infer_s = {}, []
            for path in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                image_id = path.name[: -len(path.suffix)]
                t = time.monotonic()
                query = urllib.parse.urlencode({"image": image_id, "output": "json"})
                answer = _request(f"{base}/infer/{MODEL}?{query}", method="POST")
                infer_s.append(time.monotonic() - t)
                scores = sorted(answer["prediction"], key=lambda p: p["idx"])
                probabilities[path.name] = [float(p["score"]) for p in scores]
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
    return {
        "probabilities": probabilities,
        "start_s": started,
        "infer_s": infer_s,
        "log": str(log_path),
        "labels": [p["label"] for p in scores],
    }


def check(bundle_zip="bundle/models/nvum_cxr_classification.zip", images=None, work=None, venv=str(DEFAULT_VENV),
          install: bool = False) -> dict:
    """Serve the bundle with MONAI Label and compare with ``inference.json`` (see the module docstring).

    Args:
        bundle_zip: the deployable bundle zip.
        images: a folder of PNG/JPEG files (MONAI Label's studies folder).
        work: scratch folder (default: a new temporary folder).
        venv: MONAI Label's environment.
        install: build ``venv`` first when it is not there.

    Returns:
        ``{"max_difference", "images", "build_s", "start_s", "infer_s_mean", "total_s", ...}``.
    """
    import tempfile

    import numpy as np

    from ..flags import as_bool

    begin, build_s = time.monotonic(), 0.0
    if not venv_ready(venv):
        if not as_bool(install, "install"):
            raise FileNotFoundError(f"no MONAI Label environment at {venv}: run with --install true to build it")
        build_s = build_venv(venv)
    if images is None or not Path(images).is_dir():
        raise FileNotFoundError(f"give --images, a folder of PNG/JPEG images (got {images})")
    work = Path(work or tempfile.mkdtemp(prefix="nvum-monailabel-"))
    with zipfile.ZipFile(bundle_zip) as zf:
        zf.extractall(work)
    bundle, images = work / MODEL, Path(images).resolve()
    reference = reference_probabilities(bundle, images, work / "reference.csv")
    served = serve_and_compare(bundle, images, work, venv)
    names = sorted(reference)
    if sorted(served["probabilities"]) != names:
        raise RuntimeError(f"MONAI Label answered for {sorted(served['probabilities'])}, inference.json for {names}")
    diff = float(
        np.abs(np.array([served["probabilities"][n] for n in names]) - np.array([reference[n] for n in names])).max()
    )
    result = {
        "max_difference": diff,
        "images": len(names),
        "build_s": round(build_s, 1),
        "start_s": round(served["start_s"], 1),
        "infer_s_mean": round(float(np.mean(served["infer_s"])), 3),
        "total_s": round(time.monotonic() - begin, 1),
        "labels": served["labels"],
        "work": str(work),
        "log": served["log"],
    }
    print(json.dumps(result, indent=2))
    return result

