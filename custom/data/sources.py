"""Where train.json's data comes from: the ``datalist`` id as a built data list or as a file path."""

from __future__ import annotations

from pathlib import Path


def open_datalist(datalist, dataset_dir=None):
    """The data list a training run uses, from train.json's ``datalist`` id.

    ``datalist`` may be what its config component built (a :class:`custom.DataList`, the data list
    of a real dataset with its test lists, the synthetic set) or a path string, so that
    ``--datalist my_list.json --dataset_dir /data/nih`` works as well as the dict form
    ``--datalist "{'_target_': 'custom.DataList', 'path': 'my_list.json', 'dataset_dir': '/data/nih'}"``.

    Args:
        datalist: a data-list object (anything with ``classes``, ``items(split)``, ``labels(split)``
            and ``len()``), returned as it is; or the path of a data-list file (``.json``/``.json.gz``).
        dataset_dir: folder the image paths of a data-list *file* are relative to; ``""``/``None``:
            the file's folder. Not used for a built data list (its component has its own).

    Returns:
        the data list (:class:`custom.DataList` for a path).

    Raises:
        ValueError: ``datalist`` is empty; TypeError: it is neither a path nor a data list;
        FileNotFoundError, custom.DataListError: as :class:`custom.DataList` raises them (naming the file).
    """
    if isinstance(datalist, (str, Path)):
        if str(datalist).strip() == "":
            raise ValueError("'datalist' is empty: give a data-list file (--datalist my_list.json "
                             "--dataset_dir /data/images) or a data-list component")
        from .datalist import DataList

        return DataList(datalist, dataset_dir or None)
    if all(hasattr(datalist, name) for name in ("classes", "items", "labels", "__len__")):
        return datalist
    raise TypeError(f"'datalist' must be a data-list file path or a data-list component (custom.DataList, "
                    f"custom.real_datalist, ...), got {type(datalist).__name__}: {datalist!r:.200}")
