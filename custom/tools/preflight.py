"""Pre-flight check of a training config: ``python -m custom.cli check --config_file ...``.

Run it before hours of training. It parses the config (with the same ``--key value`` overrides
the bundle command takes) and checks, without training anything:

- the config: every id MONAI's training workflow needs, and that the referenced objects build;
- the data list: keys, label lengths and values, duplicate images, patients in two splits, class
  names, and that **every image exists and decodes** (each file read once, with a progress bar);
- the pretrained weights file, when one is set: readable with ``weights_only`` and matching the
  network's keys and shapes;
- the checkpoint to resume from, when ``resume`` is set: readable and trained on a data list of
  the same size and classes;
- the output folders: writable.

It prints one line per check and a summary, and exits with status 1 when any check fails.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def _parser(config_file, overrides: dict):
    from monai.bundle import ConfigParser

    files = config_file if isinstance(config_file, (list, tuple)) else [config_file]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _writable(folder) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder):
        pass


def _root_message(exc: BaseException) -> str:
    """The message of the innermost cause (MONAI wraps component errors in generic ones)."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return str(exc).strip() or type(exc).__name__


def check(config_file="bundle/configs/train.json", **overrides) -> int:
    """Check a training config, its data and its files; print a report; return 0 if all pass, else 1."""
    from ..data import DataList, DataListWithTests
    from ..training.checkpoints import find_checkpoint

    results: list[tuple[str, bool, str]] = []

    def record(name, fn):
        try:
            detail = fn()
            results.append((name, True, detail or ""))
            print(f"[ ok ] {name}{': ' + detail if detail else ''}", flush=True)
            return True
        except Exception as e:  # every failure is reported, none stops the other checks
            msg = _root_message(e)
            results.append((name, False, msg))
            print(f"[FAIL] {name}: {msg}", flush=True)
            return False

    state: dict = {}

    def parse():
        state["parser"] = _parser(config_file, overrides)
        return f"{config_file}" + (f" with overrides {overrides}" if overrides else "")

    if not record("config parses", parse):
        return _summary(results)
    parser = state["parser"]

    def properties():
        from monai.bundle import ConfigWorkflow

        wf = ConfigWorkflow(config_file=config_file, workflow_type="train", **overrides)
        wf.initialize()
        missing = wf.check_properties()
        if missing:
            raise KeyError(f"missing training workflow ids: {missing}")

    record("training workflow ids present", properties)

    def datalist():
        dl = parser.get_parsed_content("data")  # train.json opens its datalist (a component or a path) as data
        if not isinstance(dl, (DataList, DataListWithTests)):
            raise TypeError(f"'datalist' must build a custom.DataList (or a data list with test lists), got {type(dl).__name__}")
        state["datalist"] = dl
        sizes = ", ".join(f"{s} {len(dl.items(s))}" for s in dl.splits)
        return f"{dl.path} ({len(dl.classes)} classes; {sizes})"

    if record("data list valid (keys, labels, duplicates, patient leakage)", datalist):
        dl = state["datalist"]

        def images():
            dl.verify_images()
            return f"all {sum(len(dl.items(s)) for s in dl.splits)} images decode"

        record("every image exists and decodes", images)

        def positives():
            labels = dl.labels("training")
            counts = labels.sum(axis=0)
            empty = [c for c, n in zip(dl.classes, counts) if n == 0]
            text = ", ".join(f"{c} {int(n)}" for c, n in zip(dl.classes, counts))
            if empty:
                raise ValueError(f"classes without a positive training label (their prior is floored): {empty}; counts: {text}")
            return text

        record("training positives per class", positives)

        def patients():
            per = {s: len({i["patient"] for i in dl.items(s) if "patient" in i}) for s in dl.splits}
            return ", ".join(f"{s} {n}" for s, n in per.items())

        record("patients per split (none shared)", patients)

    weights = parser.get("pretrained_weights", "")
    if weights:
        def pretrained():
            from ..networks import load_pretrained

            load_pretrained(parser.get_parsed_content("network_def"), weights)
            return str(weights)

        record("pretrained weights match the network", pretrained)

    resume = parser.get("resume", False)

    def ckpt_dir():
        return str(parser.get_parsed_content("ckpt_dir"))

    if resume not in (None, False, "", "false", "False"):
        def resumable():
            from ..networks import read_checkpoint

            path = find_checkpoint(resume, ckpt_dir())
            ckpt = read_checkpoint(path)
            if "datalist" in state and "run_record" in ckpt:
                info = ckpt["run_record"]
                dl = state["datalist"]
                if list(info["classes"]) != dl.classes or int(info["num_training"]) != len(dl):
                    raise ValueError(
                        f"checkpoint {path} was trained on {info['num_training']} images of {info['classes']}; "
                        f"the data list has {len(dl)} of {dl.classes}"
                    )
            trainer = ckpt["trainer"]
            return f"{path} (epoch {trainer['iteration'] // max(1, trainer['epoch_length'])})"

        record("checkpoint to resume from", resumable)

    def outputs():
        folders = [parser.get_parsed_content(k) for k in ("ckpt_dir", "output_dir") if k in parser]
        for f in folders:
            _writable(f)
        return ", ".join(str(f) for f in folders)

    record("output folders writable", outputs)
    return _summary(results)


def _summary(results) -> int:
    failed = [name for name, ok, _ in results if not ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def main(config_file="bundle/configs/train.json", **overrides) -> None:
    sys.exit(check(config_file, **overrides))

