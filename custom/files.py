"""Writing a file so that readers never see it half-written."""

from __future__ import annotations

import contextlib
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
