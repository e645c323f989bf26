"""Where train.json's data comes from: the ``datalist`` id as the built-in synthetic set, a built data list or a
file path."""

from __future__ import annotations

from pathlib import Path


def open_datalist(datalist, dataset_dir=None, classes=None):
    """The data list a training run uses, from train.json's ``datalist`` id.

    ``datalist`` may be the settings of the built-in synthetic set (a dict with ``"source": "synthetic"``,
    train.json's default: generated on first use, see :func:`custom.data.synthetic.synthetic_datalist`),
    what a config component built (a :class:`custom.DataList`, the data list of a real dataset with its
    test lists) or a path string, so that
    ``--datalist my_list.json --dataset_dir /data/nih`` works as well as the dict form
    ``--datalist "{'_target_': 'custom.DataList', 'path': 'my_list.json', 'dataset_dir': '/data/nih'}"``.

    Args:
        datalist: a data-list object (anything with ``classes``, ``items(split)``, ``labels(split)``
            and ``len()``), returned as it is; the path of a data-list file (``.json``/``.json.gz``); or
            ``{"source": "synthetic", <generator settings>}``.
        dataset_dir: folder the image paths of a data-list *file* are relative to; ``""``/``None``:
            the file's folder. Not used for a built data list (its component has its own).
        classes: the classes the network is built for (the model contract, ``common.json``'s ``classes``);
            a data list with other classes, or the same in another order, is refused with the override to use.

    Returns:
        the data list (:class:`custom.DataList` for a path).

    Raises:
        ValueError: ``datalist`` is empty; TypeError: it is neither a path nor a data list;
        FileNotFoundError, custom.DataListError: as :class:`custom.DataList` raises them (naming the file).
    """
    opened = _open(datalist, dataset_dir)
    if classes is not None and list(opened.classes) != [str(c) for c in classes]:
        raise ValueError(
            f"the data list {getattr(opened, 'path', '')} has classes {list(opened.classes)}, but the network is built "
            f"for {list(classes)} (common.json's 'classes'); train with --classes \"{list(opened.classes)}\" or a "
            "dataset overlay that sets them"
        )
    return opened


def _open(datalist, dataset_dir):
    if isinstance(datalist, (str, Path)):
        if str(datalist).strip() == "":
            raise ValueError("'datalist' is empty: give a data-list file (--datalist my_list.json "
                             "--dataset_dir /data/images) or a data-list component")
        from .datalist import DataList

        return DataList(datalist, dataset_dir or None)
    if isinstance(datalist, dict):
        settings = dict(datalist)
        if settings.pop("source", None) != "synthetic":
            raise ValueError(f"'datalist' as settings must have \"source\": \"synthetic\" (the built-in set); got "
                             f"keys {sorted(datalist)}. A data list of your own is a file: --datalist my_list.json")
        from .synthetic import synthetic_datalist

        return synthetic_datalist(**settings)
    if all(hasattr(datalist, name) for name in ("classes", "items", "labels", "__len__")):
        return datalist
    raise TypeError(f"'datalist' must be a data-list file path or a data-list component (custom.DataList, "
                    f"custom.real_datalist, ...), got {type(datalist).__name__}: {datalist!r:.200}")
