"""Processes the tools start and stop (a served model, a MONAI Label server)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and every process of its group: SIGTERM, then SIGKILL
    after ``timeout`` seconds; a group already gone is fine."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
