"""What a command line prints when something goes wrong, and the third-party noise it does not print.

**The last line names the problem.** MONAI wraps an error of a config component in generic ones
(``Failed to instantiate component ...``, ``applying transform ...``), so the project's own message,
which names the file, split, row and key, ends up 50-200 lines above the end of Python's
traceback. :func:`install_excepthook` replaces Python's report of an uncaught exception, for the
bundle's command lines only (``python -m monai.bundle ...`` and ``python -m custom.cli ...``), by a
condensed one: one line per exception of the chain, the details of the project's message (its
lines after the first), and last ``error: <message>``, the message of the innermost exception
raised by this project's code (else of the innermost exception). The exit status stays 1.
``NVUM_TRACEBACK=1`` prints Python's full traceback instead of the condensed chain (the last line
is the same).

**Noise.** :func:`filter_third_party_noise` silences, by their exact messages, the third-party
warnings that tell a user of this bundle nothing (installed when ``custom`` is imported).
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from pathlib import Path

#: the package folder: an exception whose traceback ends in a file under it was raised by project code.
PACKAGE_DIR = Path(__file__).resolve().parent
#: main modules (``python -m <name>``) whose uncaught exceptions are reported by :func:`report`.
COMMAND_MODULES = ("monai.bundle.__main__", "monai.bundle", "custom.cli", "custom.tools.cli")
#: environment variable: ``1`` prints the full traceback before the ``error:`` line.
TRACEBACK_ENV = "NVUM_TRACEBACK"
#: longest line of the condensed chain.
_WIDTH = 200

#: (message regex, category, module regex) of the warnings :func:`filter_third_party_noise` drops.
NOISE = (
    # torch, on the read-only arrays MONAI's image readers hand over (they are copied before use)
    (r"The given NumPy array is not writable", UserWarning, ""),
    # MONAI's verify_metadata on the bundle's own local schema copy (no download, nothing to hash)
    (r"No hash value provided for .*meta_schema_\d+\.json", UserWarning, ""),
    # MONAI's DICOM reader, at every construction on a machine without NVIDIA's GPU decoder (every CPU
    # machine): pydicom decodes without it
    (r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register", UserWarning, ""),
)


#: loggers whose warnings say nothing to a user of this bundle, and the level they are raised to.
QUIET_LOGGERS = {
    # MONAI's DICOM reader looks for NVIDIA's GPU decoder at every construction and warns when it is
    # absent (on every CPU machine); pydicom decodes without it
    "monai.data.nvimgcodec_pydicom_plugin": "ERROR",
}


def filter_third_party_noise() -> None:
    """Drop the warnings listed in :data:`NOISE` and raise the level of :data:`QUIET_LOGGERS`
    (only those; every other warning is shown)."""
    import logging

    for message, category, module in NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``, else ``__context__`` unless
    suppressed), outermost first."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return chain


def _innermost(exc: BaseException):
    """The innermost traceback entry of ``exc`` (where it was raised), or ``None``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def raised_by_project(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is in this package's code (this module excepted)."""
    tb = _innermost(exc)
    if tb is None:
        return False
    path = Path(tb.tb_frame.f_code.co_filename)
    try:
        path = path.resolve()
    except OSError:
        return False
    return path != Path(__file__).resolve() and PACKAGE_DIR in path.parents


def project_exception(exc: BaseException) -> BaseException:
    """The exception a user should read: the innermost one of the chain raised by project code,
    else the innermost one."""
    chain = exception_chain(exc)
    for candidate in reversed(chain):
        if raised_by_project(candidate):
            return candidate
    return chain[-1]


def message(exc: BaseException) -> str:
    """The text of an exception (``KeyError``'s quotes removed), or its type when it has none."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    return text.strip() or type(exc).__name__


def _where(exc: BaseException) -> str:
    tb = _innermost(exc)
    if tb is None:
        return ""
    path = Path(tb.tb_frame.f_code.co_filename)
    try:
        path = path.resolve().relative_to(PACKAGE_DIR.parent)
    except (OSError, ValueError):
        pass
    return f"{path}:{tb.tb_lineno}"


def _short(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _WIDTH else line[: _WIDTH - 3] + "..."


def _wrong_folder(exc: BaseException) -> str | None:
    """The message of a repository file named by a relative path (a dataset overlay's ``data_lists/...``) and not
    found because the command runs from another folder than the repository root."""
    name = getattr(exc, "filename", None)
    if not isinstance(exc, FileNotFoundError) or not isinstance(name, str) or Path(name).is_absolute():
        return None
    root = PACKAGE_DIR.parent
    if Path(name).exists() or not (root / name).is_file() or Path.cwd().resolve() == root:
        return None
    return (f"{name} is not found from the working folder {Path.cwd()}: it is the repository's {root / name}; give "
            f"that full path or run from the repository root")


def format_report(exc: BaseException, full: bool = False) -> str:
    """The report of an uncaught exception (see the module docstring); its last line is ``error: ...``."""
    chosen = project_exception(exc)
    lines = []
    if full:
        lines.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    else:
        lines.append(f"Traceback, condensed ({TRACEBACK_ENV}=1 shows the full one):")
        for item in exception_chain(exc):
            mark = f"   [raised at {_where(item)}]" if item is chosen else ""
            lines.append(f"  {type(item).__name__}: {_short(message(item))}{mark}")
    text = (_wrong_folder(chosen) or message(chosen)).splitlines()
    if len(text) > 1:
        lines.append("details:")
        lines += [f"  {line.strip()}" for line in text[1:] if line.strip()]
    lines.append(f"error: {text[0].strip()}")
    return "\n".join(lines)


def settle_pool_workers(timeout: float = 30.0) -> None:
    """Let the worker threads of a thread pool finish the item they hold (at most ``timeout`` seconds).

    When one image fails while ``CacheDataset`` fills its cache with ``num_workers`` threads, the pool is
    terminated but its daemon threads go on transforming the images they hold; if the interpreter shuts
    down meanwhile, a thread inside torch is stopped mid-call and the process aborts (SIGABRT) after the
    report. Waiting for them first makes the command end on the report with exit status 1."""
    import threading
    import time
    from multiprocessing import pool

    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and getattr(thread, "_target", None) is pool.worker:
            thread.join(max(0.0, deadline - time.monotonic()))


def report(exc_type, exc, tb) -> None:
    """A ``sys.excepthook``: the condensed report for exceptions, Python's own for interrupts."""
    if not isinstance(exc, Exception):
        sys.__excepthook__(exc_type, exc, tb)
        return
    try:
        sys.stdout.flush()  # what the command printed comes before the report
    except Exception:  # a closed or broken stdout must not hide the report
        pass
    settle_pool_workers()
    from .flags import as_bool

    try:
        full = as_bool(os.environ.get(TRACEBACK_ENV, ""), TRACEBACK_ENV)
    except ValueError:  # any other value asks for the traceback too
        full = True
    try:
        text = format_report(exc, full)
    except Exception:  # never lose the original error to a bug here
        sys.__excepthook__(exc_type, exc, tb)
        return
    print(text, file=sys.stderr, flush=True)


def main_module() -> str | None:
    """The name of the module run as ``python -m <name>`` (``None`` for scripts and interactive use)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None)


def install_excepthook(force: bool = False) -> bool:
    """Report uncaught exceptions with :func:`report` when the program is one of :data:`COMMAND_MODULES`
    (or with ``force``); returns whether it was installed. Python's default hook stays in place for
    everything else (tests, notebooks, other programs importing ``custom``)."""
    if not force and main_module() not in COMMAND_MODULES:
        return False
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = report
    return sys.excepthook is report
