"""One run per output folder: a second process is refused at once, naming the holder; a dead holder's lock is taken
over with a message."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from custom.training.runlock import LOCK_NAME, FolderInUseError, RunLock

HOLD = textwrap.dedent("""
    import sys, time
    from custom.training.runlock import RunLock
    lock = RunLock(sys.argv[1])
    print("held", flush=True)
    time.sleep(120)
""")


def _start_holder(folder):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_into_a_locked_folder_stops_naming_the_folder_and_the_holder(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime())
        with pytest.raises(FolderInUseError) as e:
            RunLock(tmp_path)
        message = str(e.value)
        assert str(tmp_path.resolve()) in message and f"process {holder.pid} " in message
        assert f"started {started}" in message and "--bundle_root" in message
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_message(tmp_path, capsys):
    holder = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = RunLock(tmp_path)
    try:
        assert lock.held
        out = capsys.readouterr().out
        assert f"taking over the run lock of {tmp_path.resolve()}: process {holder.pid} " in out
        assert "is no longer running" in out
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_NAME).read_text()
    finally:
        lock.release()


def test_a_released_lock_lets_the_next_process_in_and_one_process_may_run_twice_into_its_folder(tmp_path):
    first = RunLock(tmp_path)
    assert RunLock(tmp_path).held  # the same process again (a notebook, a test): no deadlock on itself
    first.release()
    done = subprocess.run([sys.executable, "-c", "import sys; from custom.training.runlock import RunLock; "
                           "print(RunLock(sys.argv[1]).held)", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "True", done.stderr
