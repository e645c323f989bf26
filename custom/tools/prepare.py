"""``python -m custom.cli prepare``: decode a data list's images once into a store (:mod:`custom.data.store`)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..data.store import (DATALIST_FILE, ERRORS_FILE, IMAGES_FILE, PENDING, STATUS_FILE, STORE_FILE, STORED,
                          UNREADABLE, StoreError)
from ..files import file_sha256

_WORKER: dict = {}  # per worker process: the transforms and the open arrays


def _transforms(image_size: int):
    """train.json's ``load_image`` and ``to_network_input`` (common.json's, at ``image_size``): the store holds
    exactly what training computes from the original, before normalisation."""
    from .training import train_parser

    parser = train_parser({"image_size": int(image_size)})
    return parser.get_parsed_content("load_image"), parser.get_parsed_content("to_network_input").converter


def _code_first_on_path() -> None:
    """Put the folder of the ``custom`` package this process runs first on ``sys.path``, which spawned workers copy:
    they then import this code, even where something earlier in the process (an MLflow model's code folder, a
    deployable bundle's runtime-only ``custom``) was put ahead of it."""
    import sys

    root = str(Path(__file__).resolve().parents[2])
    if not sys.path or sys.path[0] != root:
        sys.path.insert(0, root)


def _start(folder: str, image_size: int) -> None:
    import torch

    torch.set_num_threads(1)
    load, convert = _transforms(image_size)
    _WORKER.update(load=load, convert=convert, images=np.load(Path(folder) / IMAGES_FILE, mmap_mode="r+"))


def _encode(path: str) -> np.ndarray:
    """The 8-bit grey image training would compute from ``path`` (``to_network_input`` before normalisation)."""
    return _WORKER["convert"].grey8(_WORKER["load"]({"image": path})["image"])[0].numpy()


def _prepare_chunk(chunk) -> list[tuple[int, str | None]]:
    """Decode and store the rows ``chunk`` ([(row, path)]); ``(row, reason or None)`` for each, after flushing."""
    from ..data.transforms import ImageReadError

    images, done = _WORKER["images"], []
    for row, path in chunk:
        try:
            images[row] = _encode(path)
            done.append((row, None))
        except ImageReadError as e:
            done.append((row, e.reason))
        except Exception as e:  # anything else a reader raises on bad data
            reason = str(e).strip().splitlines()
            done.append((row, f"{type(e).__name__}: {reason[0] if reason else ''}"))
    images.flush()
    return done


def prepare(datalist: str, image_size: int = 512, output: str = "", dataset_dir: str | None = None,
            workers: int | None = None, chunk: int = 32, progress: bool = True) -> Path:
    """Decode every image of ``datalist`` once into a store in ``output``; returns the store's data list.

    Resumable: a second run with the same list and size stores only the images not stored yet. A store
    in ``output`` made from another list, or at another size, is refused naming both.
    """
    from ..data import DataList

    if not output:
        raise ValueError("prepare needs --output, the folder of the store")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    size, out, source = int(image_size), Path(output), Path(datalist).resolve()
    src = DataList(source, dataset_dir, required_splits=(), check_images=False)
    if src.store is not None:
        raise StoreError(f"{datalist} is already a prepared store's data list; prepare from its source list "
                         f"{src.store['source']}")
    jobs = [(split, row, str(src.dataset_dir / item["image"])) for split in src.splits
            for row, item in enumerate(src.raw_items(split))]
    meta = {"image_size": size, "count": len(jobs), "source": str(source), "source_sha256": file_sha256(source),
            "images": IMAGES_FILE, "dtype": "uint8"}
    out.mkdir(parents=True, exist_ok=True)
    status = _open_arrays(out, meta)
    todo = [(i, jobs[i][2]) for i in np.flatnonzero(status != STORED).tolist()]
    reasons = _run(out, size, todo, workers, chunk, progress, status)
    errors = [(jobs[i][0], jobs[i][1], src.raw_items(jobs[i][0])[jobs[i][1]]["image"], reasons.get(i, "unreadable"))
              for i in np.flatnonzero(status == UNREADABLE).tolist()]
    _write_outputs(out, src, meta, status, errors)
    print(f"prepared {int((status == STORED).sum())} of {len(jobs)} images at {size} x {size} pixels in {out} "
          f"({len(todo)} decoded in this run)"
          + (f"; {len(errors)} unreadable, listed in {out / ERRORS_FILE}" if errors else ""))
    return out / DATALIST_FILE


def _open_arrays(out: Path, meta: dict) -> np.ndarray:
    """The status array of the store in ``out``: a new one, or the one of an interrupted run of the same job."""
    record = out / STORE_FILE
    if record.is_file():
        old = json.loads(record.read_text())
        if int(old.get("image_size", -1)) != meta["image_size"]:
            raise StoreError(f"the store {out} holds {old.get('image_size')}-pixel images, asked for "
                             f"{meta['image_size']}: use another --output")
        if old.get("source_sha256") != meta["source_sha256"] or int(old.get("count", -1)) != meta["count"]:
            raise StoreError(f"the store {out} was prepared from {old.get('source')} (SHA-256 "
                             f"{str(old.get('source_sha256'))[:12]}...), not from {meta['source']} as it is now "
                             f"(SHA-256 {meta['source_sha256'][:12]}...): use another --output, or delete the store")
        return np.load(out / STATUS_FILE, mmap_mode="r+")
    n, s = meta["count"], meta["image_size"]
    np.lib.format.open_memmap(out / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(n, s, s)).flush()
    status = np.lib.format.open_memmap(out / STATUS_FILE, mode="w+", dtype=np.uint8, shape=(n,))
    status[:] = PENDING
    status.flush()
    record.write_text(json.dumps({**meta, "complete": False}, indent=2) + "\n")
    return status


def _run(out: Path, size: int, todo, workers, chunk: int, progress: bool, status) -> dict:
    """Decode ``todo`` ([(row, path)]) on ``workers`` processes (0: in this one); marks ``status`` as rows finish
    (after their pixels are flushed, so that an interrupted run resumes safely); returns {row: reason}."""
    from tqdm.auto import tqdm

    workers = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    reasons = {}
    bar = tqdm(total=len(todo), desc="preparing images", unit="img", disable=not progress or not todo,
               mininterval=1)
    if workers <= 0:
        _start(str(out), size)
        results, pool = map(_prepare_chunk, chunks), None
    else:  # a worker that fails to start or dies stops the run (BrokenProcessPool) instead of being replaced
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        _code_first_on_path()
        pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _start, (str(out), size))
        results = (f.result() for f in as_completed([pool.submit(_prepare_chunk, c) for c in chunks]))
    try:
        for done in results:
            for row, reason in done:
                status[row] = STORED if reason is None else UNREADABLE
                if reason is not None:
                    reasons[row] = reason
            status.flush()
            bar.update(len(done))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _WORKER.clear()
    return reasons


def _write_outputs(out: Path, src, meta: dict, status, errors) -> None:
    """The store's data list (the readable rows, labels and patients kept), its errors file and its record."""
    from ..files import write_json

    row, content = 0, {k: v for k, v in src.meta.items() if k not in ("generator", "summary")}
    for split in src.splits:
        items = []
        for item in src.raw_items(split):
            if status[row] == STORED:
                items.append({**{k: v for k, v in item.items() if k != "image"}, "image": f"{IMAGES_FILE}#{row}"})
            row += 1
        content[split] = items
    content["classes"], content["store"] = src.classes, meta
    errors_file = out / ERRORS_FILE
    if errors:
        with open(errors_file, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["split", "row", "image", "reason"])
            writer.writerows(errors)
    elif errors_file.exists():
        errors_file.unlink()
    write_json(content, out / DATALIST_FILE)
    (out / STORE_FILE).write_text(json.dumps({**meta, "complete": True, "unreadable": len(errors)}, indent=2) + "\n")
