"""A real MONAI Label server on the deployable bundle, checked against ``inference.json``.

``python -m custom.cli monailabel --bundle_zip bundle/models/nvum_cxr_classification.zip --images <image folder>``

1. builds MONAI Label's own environment when asked (``--install true``): a venv (default
   ``~/venv-monailabel``) with the pins of ``monailabel_requirements.txt`` (MONAI Label 0.8.5 needs
   ``numpy<2``, pydicom 2 and torchvision, so it cannot share this project's environment);
2. unzips the bundle and copies its MONAI Label app (``scripts/monailabel_app``) into a work folder;
3. computes the reference: ``inference.json`` of the unzipped bundle, in this environment;
4. starts ``monailabel start_server`` on 127.0.0.1 with the images as the studies folder (its datastore set to
   list DICOM and JPEG files too: ``MONAI_LABEL_DATASTORE_FILE_EXT``), calls
   ``POST /infer/nvum_cxr_classification?image=<id>&output=json`` for every image inference reads (PNG, JPEG,
   DICOM; by its datastore id, or by its path when in a subfolder or without a suffix), stops the server;
5. checks that MONAI Label refused (HTTP 4xx, with the reason) exactly the files inference listed in its
   errors file, and refuses each of them again when uploaded with ``params={"file_name": <its name>}``, naming it;
   returns (and prints) the largest difference between the served and the reference
   probabilities, with the time each step took.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path

from .processes import stop_group

#: where the MONAI Label environment is looked for (``$NVUM_MONAILABEL_VENV`` overrides).
DEFAULT_VENV = Path(os.environ.get("NVUM_MONAILABEL_VENV", Path.home() / "venv-monailabel"))
REQUIREMENTS = Path(__file__).with_name("monailabel_requirements.txt")
MODEL = "nvum_cxr_classification"
#: the files MONAI Label's datastore lists (``MONAI_LABEL_DATASTORE_FILE_EXT``; its default has no DICOM and no .jpeg).
DATASTORE_FILE_EXT = ["*.png", "*.jpg", "*.jpeg", "*.dcm", "*.dicom"]


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


def _upload(url: str, path: Path, params: dict, timeout: float = 300):
    """POST ``path`` to ``url`` as MONAI Label's upload form (``file``, with ``params`` as JSON)."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def label_env(env: dict) -> dict:
    """``env`` with MONAI Label's datastore set to list the files inference reads (:data:`DATASTORE_FILE_EXT`)."""
    return {**env, "MONAI_LABEL_DATASTORE_FILE_EXT": json.dumps(DATASTORE_FILE_EXT)}


def studies_requests(images: Path) -> dict[str, str]:
    """``{name: the image parameter of /infer}`` for every file inference reads under ``images``
    (:func:`custom.serving.inference.list_inputs`), named by its path under ``images``: a file of the folder itself
    with a suffix of :data:`DATASTORE_FILE_EXT` by its datastore id (the name without the suffix), any other by its
    absolute path."""
    from ..serving.inference import list_inputs

    out, listed = {}, tuple(e.removeprefix("*") for e in DATASTORE_FILE_EXT)
    for item in list_inputs(images):
        path = Path(item["image"])
        name = path.relative_to(images).as_posix()
        if path.parent == images and path.suffix.lower() in listed:
            out[name] = path.name[: -len(path.suffix)]
        else:
            out[name] = str(path.resolve())
    return out


def compare(reference: dict, reference_errors: dict, served: dict, refused: dict) -> float:
    """The largest difference between ``served`` and ``reference`` probabilities (``{name: [p, ...]}``), once MONAI
    Label has answered for exactly the images inference scored and refused exactly those inference listed in its
    errors file (``{name: reason}``); RuntimeError naming the files otherwise."""
    import numpy as np

    if sorted(served) != sorted(reference) or sorted(refused) != sorted(reference_errors):
        raise RuntimeError(f"MONAI Label answered for {sorted(served)} and refused {sorted(refused)}; inference.json "
                           f"scored {sorted(reference)} and listed {sorted(reference_errors)} in its errors file")
    if not served:
        return 0.0
    names = sorted(served)
    return float(np.abs(np.array([served[n] for n in names]) - np.array([reference[n] for n in names])).max())


def reference_probabilities(bundle: Path, images: Path, output: Path) -> tuple[dict[str, list[float]], dict]:
    """``({image: probabilities}, {image: reason})`` from the unzipped bundle's ``inference.json`` (this
    environment): the images it scored and those of its errors file, by their path under ``images``."""
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
    def name(path) -> str:
        return Path(path).relative_to(images).as_posix()

    table = pd.read_csv(output)
    errors_file = output.with_name("errors.csv")
    errors = pd.read_csv(errors_file) if errors_file.is_file() else pd.DataFrame({"image": [], "reason": []})
    skipped = {name(p): r for p, r in zip(errors["image"], errors["reason"])
               if not str(r).startswith("degenerate image, scored")}
    return {name(p): row.tolist() for p, row in zip(table.pop("image"), table.to_numpy())}, skipped


def _refused_upload(url: str, path: Path, log_path) -> str:
    """MONAI Label's detail for a refused file sent as an upload named in its params (``file_name``): it must be an
    HTTP 4xx that names the file as the client named it."""
    try:
        _upload(url, path, {"file_name": path.name})
    except urllib.error.HTTPError as e:
        detail = str(json.loads(e.read() or b"{}").get("detail", ""))
        if 400 <= e.code < 500 and f"the uploaded file {path.name} " in detail:
            return detail
        raise RuntimeError(f"MONAI Label answered the upload of {path.name} with HTTP {e.code}, {detail!r}, which does "
                           f"not name it; see {log_path}") from None
    raise RuntimeError(f"MONAI Label scored the upload of {path.name}, which it refused by id; see {log_path}")


def serve_and_compare(bundle: Path, images: Path, work: Path, venv=DEFAULT_VENV, timeout: float = 600) -> dict:
    """Start MONAI Label on ``images`` with the app serving ``bundle``; probabilities of every image.

    Returns:
        ``{"probabilities": {name: [p, ...]}, "refused": {name: MONAI Label's detail}, "refused_uploads": {name:
        its detail when the file is uploaded, named in the params}, "start_s": ..., "infer_s": [...], "log": path}``,
        by the images' paths under ``images``.
    """
    app = work / "app"
    shutil.copytree(bundle / "scripts" / "monailabel_app", app, dirs_exist_ok=True)
    port, log_path = _free_port(), work / "monailabel.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{Path(venv) / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # its start script runs `python`
    env = label_env(env)
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
            probabilities, refused, uploaded, infer_s, scores = {}, {}, {}, [], []
            for name, image in studies_requests(images).items():
                t = time.monotonic()
                query = urllib.parse.urlencode({"image": image, "output": "json"})
                try:
                    answer = _request(f"{base}/infer/{MODEL}?{query}", method="POST")
                except urllib.error.HTTPError as e:
                    if not 400 <= e.code < 500:
                        raise RuntimeError(f"MONAI Label answered {name} with HTTP {e.code}: {e.read()[-2000:]!r}; "
                                           f"see {log_path}") from None
                    refused[name] = str(json.loads(e.read() or b"{}").get("detail", ""))
                    uploaded[name] = _refused_upload(f"{base}/infer/{MODEL}?output=json", images / name, log_path)
                    continue
                infer_s.append(time.monotonic() - t)
                scores = sorted(answer["prediction"], key=lambda p: p["idx"])
                probabilities[name] = [float(p["score"]) for p in scores]
        finally:
            stop_group(server)
    return {
        "probabilities": probabilities,
        "refused": refused,
        "refused_uploads": uploaded,
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
        images: a folder of PNG, JPEG or DICOM files (MONAI Label's studies folder).
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
        raise FileNotFoundError(f"give --images, a folder of PNG, JPEG or DICOM images (got {images})")
    work = Path(work or tempfile.mkdtemp(prefix="nvum-monailabel-"))
    with zipfile.ZipFile(bundle_zip) as zf:
        zf.extractall(work)
    bundle, images = work / MODEL, Path(images).resolve()
    reference, reference_errors = reference_probabilities(bundle, images, work / "reference.csv")
    served = serve_and_compare(bundle, images, work, venv)
    diff = compare(reference, reference_errors, served["probabilities"], served["refused"])
    result = {
        "max_difference": diff,
        "images": len(reference),
        "refused": served["refused"],
        "refused_uploads": served["refused_uploads"],
        "build_s": round(build_s, 1),
        "start_s": round(served["start_s"], 1),
        "infer_s_mean": round(float(np.mean(served["infer_s"])), 3) if served["infer_s"] else None,
        "total_s": round(time.monotonic() - begin, 1),
        "labels": served["labels"],
        "work": str(work),
        "log": served["log"],
    }
    print(json.dumps(result, indent=2))
    return result

