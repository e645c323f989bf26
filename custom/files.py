"""Writing a file so that readers never see it half-written."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, tmp=None):
    """Yield a temporary path to write ``path``'s content to; on success it is renamed over ``path``
    (atomic on one file system), on an error it is removed and ``path`` is left as it was.

    Args:
        path: the file to write.
        tmp: the temporary path (default: ``path`` with ``.tmp`` appended, in the same folder).
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(folder, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and write a file into it (removed at once); raise naming the folder and the cause
    when that fails: a file where a folder is needed (the folder itself or one above it), a read-only file system,
    no permission. A run checks where it will write before it starts."""
    import errno
    import tempfile

    folder = Path(folder)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        where = "it" if blocking == folder else f"{blocking} (above it)"
        raise NotADirectoryError(f"cannot write to the {what} {folder.resolve()}: {where} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        cause = e.strerror or str(e)
        if e.errno == errno.EROFS:
            cause = "the file system is read-only"
        elif e.errno in (errno.EACCES, errno.EPERM):
            cause = "permission denied"
        missing = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
        made = f" (it does not exist and {missing} could not be made)" if missing is not None else ""
        raise PermissionError(f"cannot write to the {what} {folder.resolve()}{made}: {cause}") from None
    return folder


def is_inside(path: str, folder: str) -> bool:
    """Whether the resolved ``path`` is ``folder`` or under it (both already resolved: ``os.path.realpath``)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def read_json(path, what: str = "file"):
    """The content of a ``.json`` or ``.json.gz`` file; a missing or invalid file raises naming it and ``what`` it
    is (``FileNotFoundError`` / ``ValueError``). The one JSON reader of the project."""
    import gzip
    import json

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, OSError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None


def write_json(content, path, indent: int | None = 1) -> Path:
    """Write ``content`` as JSON, atomically (:func:`atomic_path`), creating the folder; a name ending in ``.gz`` is
    gzipped byte-reproducibly (no timestamp, compact separators). The one JSON writer of the project."""
    import gzip
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gz = path.suffix == ".gz"
    text = json.dumps(content, separators=(",", ":") if gz else (",", ": "), indent=None if gz else indent)
    with atomic_path(path) as tmp:
        if gz:
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                       compresslevel=9) as f:
                f.write(text.encode("utf-8"))
        else:
            tmp.write_text(text + "\n", encoding="utf-8")
    return path


def plain_json(value):
    """A config value as plain JSON types (tuples as lists; anything else as text)."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MB blocks (hex)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
