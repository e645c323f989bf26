"""The memory of a served model: idle, after a refused request of about 300 MB and after 1,000 large rows.

``python -m custom.cli serve_memory --model models:/nvum-chestxray/1 [--workers 2] [--env "{'KEY': 'VALUE'}"]``
(with ``MLFLOW_TRACKING_URI`` set) starts ``mlflow models serve`` on a free loopback port with the given
environment, and prints the resident memory (RSS) of all the server's processes together:

1. idle, after one small request;
2. after a request of ``--refused_mb`` MB of base64 text (300; the model refuses it unread, over its byte limit);
3. after ``--rows`` rows (1,000) of ``--size`` x ``--size`` random grey PNGs (1024), sent ``--per_request`` rows
   (125) at a time, each answered with HTTP 200;

and the ratio of each to idle. The server is stopped at the end. It measures this machine only: the figures
in ``bundle/docs/deploy.md`` came from it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .processes import stop_group


def group_rss(pgid: int) -> int:
    """Bytes resident of the processes of the process group ``pgid`` but its leader (``mlflow models serve``
    itself, which only waits for the server), from ``/proc``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # the fields after the name: state, ppid, pgrp, ...
                continue
            status = (entry / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _post(url: str, body: bytes, timeout: float = 600) -> int:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def _body(rows: list[str]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows]}}).encode()


def _settle(pgid: int, seconds: float = 3.0) -> int:
    time.sleep(seconds)
    return group_rss(pgid)


def measure(model: str, workers: int = 1, env: dict | None = None, refused_mb: int = 300, rows: int = 1000,
            size: int = 1024, per_request: int = 125, timeout: float = 300) -> dict:
    """Serve ``model`` and measure its memory (see the module docstring); the figures in MB and ratios."""
    from .loadtest import _png

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    server_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server_env.update(env or {})
    server = subprocess.Popen(cmd, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    url, mb = f"http://127.0.0.1:{port}", 2**20
    try:
        start = time.monotonic()
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}: {' '.join(cmd)}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() - start > timeout:
                    raise TimeoutError(f"the server did not answer in {timeout:.0f} s") from None
                time.sleep(0.5)
        small = base64.b64encode(_png(64, 0)).decode()
        status = _post(f"{url}/invocations", _body([small] * 2))
        if status != 200:
            raise RuntimeError(f"the served model answered a small request with HTTP {status}")
        idle = _settle(server.pid)
        row = "A" * (4 * mb)  # valid base64 text, never decoded: over the byte limit the request is refused
        refused = _post(f"{url}/invocations", _body([row] * max(1, refused_mb // 4)))
        after_refused = _settle(server.pid)
        images = [base64.b64encode(_png(size, seed)).decode() for seed in range(min(per_request, rows))]
        statuses = set()
        for first in range(0, rows, per_request):
            count = min(per_request, rows - first)
            statuses.add(_post(f"{url}/invocations", _body([images[i % len(images)] for i in range(count)])))
        after_rows = _settle(server.pid)
    finally:
        stop_group(server)
    return {"workers": workers, "env": env or {}, "idle_mb": round(idle / mb), "refused_status": refused,
            "after_refused_mb": round(after_refused / mb), "after_refused_ratio": round(after_refused / idle, 2),
            "rows_statuses": sorted(statuses), "after_rows_mb": round(after_rows / mb),
            "after_rows_ratio": round(after_rows / idle, 2)}
