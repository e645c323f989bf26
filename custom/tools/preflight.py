"""Pre-flight check of a training config: ``python -m custom.cli check --config_file ...``.

Run it before hours of training. It parses the config (with the same ``--key value`` overrides
the bundle command takes) and checks, without training anything:

- the config: every setting given names an id of the config (a misspelt one fails, naming the
  closest ids), every id MONAI's training workflow needs is present (nothing is built for this);
- the data list: keys, label lengths and values, images listed twice (in one split or in two),
  image paths outside ``dataset_dir``, patients in two splits, class names: every problem of the
  list in one message;
- the images: **every image exists and decodes** (each file read once, with a progress bar);
  all missing and all unreadable ones are listed, with their count; in the same pass, the
  degenerate ones (a side under ``image_size / 4``, or constant): a warning naming them, a failure
  with the data list's ``on_degenerate_image='refuse'``;
- the training positives of every class, the network and the loss (they build); numeric settings
  (``image_size``, ``batch_size``, ``max_epochs``, ``learning_rate``, ...) that cannot work;
- no last training batch of one image (batch norm cannot train on it);
- with ``test_and_deploy`` on, test sets to evaluate after training;
- the pretrained weights file, when one is set: readable with ``weights_only`` and matching the
  network's keys and shapes;
- the checkpoint to resume from, when ``resume`` is set: readable and trained on a data list of
  the same size and classes;
- the output folders: writable.

What stops training fails here, what training only warns about is a warning here (a class
without a training positive; images that ``on_bad_image='skip'`` will drop; degenerate images;
resuming under another seed). It prints one line per check (``[ ok ]``, ``[warn]``, ``[FAIL]`` or ``[skip]`` when a
check needs what failed before), a summary, and exits with status 1 when any check fails.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

from ..flags import as_bool

#: the numeric settings checked when the config is parsed (see custom.flags.NUMERIC_SETTINGS).
NUMERIC_IDS = ("image_size", "batch_size", "max_epochs", "learning_rate", "val_interval", "num_workers", "seed")
#: most bad images listed by the image check (all of them up to this number).
MAX_IMAGES_LISTED = 1000
#: most degenerate images named by the warning of the degenerate-image check.
MAX_DEGENERATE_NAMED = 5


class CheckWarning(Exception):
    """Raised by a check that passes with a warning (training would go on, and say the same)."""


class CheckSkipped(Exception):
    """Raised by a check that cannot run because of an earlier failure (the message says which)."""


def _parser(config_file, overrides: dict):
    from monai.bundle import ConfigParser

    from ..config import check_overrides, resolve_includes

    files = config_file if isinstance(config_file, (list, tuple)) else [config_file]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    check_overrides(resolve_includes(parser.get(), Path.cwd()), overrides)  # a misspelt setting fails here
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _writable(folder) -> None:
    from ..files import check_writable

    check_writable(folder)


def _message(exc: BaseException) -> str:
    """The project's message of an error (MONAI wraps component errors in generic ones)."""
    from ..console import message, project_exception

    return message(project_exception(exc))


class _Report:
    """The checks' results, printed as they come."""

    def __init__(self):
        self.results: list[tuple[str, str, str]] = []  # (name, status, detail)

    def _print(self, status: str, name: str, detail: str) -> None:
        first, *rest = detail.splitlines() or [""]
        print(f"[{status}] {name}{': ' + first if first else ''}", flush=True)
        for line in rest:
            print(f"         {line.strip()}", flush=True)

    def run(self, name: str, fn, needs: tuple[str, ...] = ()) -> bool:
        """Run one check; ``needs``: names of earlier checks it needs (it is skipped when one did not pass)."""
        failed = [n for n, status, _ in self.results if n in needs and status not in ("ok", "warn")]
        if failed:
            self.results.append((name, "skip", ""))
            self._print("skip", name, f"needs a passing '{failed[0]}'")
            return False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                detail = fn() or ""
                status = "ok"
            except CheckWarning as e:
                detail, status = str(e), "warn"
            except CheckSkipped as e:
                detail, status = str(e), "skip"
            except Exception as e:  # every failure is reported, none stops the other checks
                detail, status = _message(e), "FAIL"
        if status == "ok" and caught:  # what training would warn about (e.g. a floored class prior)
            detail, status = "; ".join(dict.fromkeys(str(w.message) for w in caught)), "warn"
        self.results.append((name, status, detail))
        self._print({"ok": " ok ", "warn": "warn", "FAIL": "FAIL", "skip": "skip"}[status], name, detail)
        return status in ("ok", "warn")

    def summary(self) -> int:
        failed = [name for name, status, _ in self.results if status == "FAIL"]
        warned = [name for name, status, _ in self.results if status == "warn"]
        skipped = [name for name, status, _ in self.results if status == "skip"]
        passed = sum(status in ("ok", "warn") for _, status, _ in self.results)
        text = f"\n{passed}/{len(self.results)} checks passed"
        if warned:
            text += f" ({len(warned)} with a warning: {', '.join(warned)})"
        if failed:
            text += f"; failed: {', '.join(failed)}"
        if skipped:
            text += f"; not run: {', '.join(skipped)}"
        print(text, flush=True)
        return 1 if failed else 0


CONFIG = "config parses"
IDS = "training workflow ids present"
DATALIST = "data list valid (keys, labels, duplicates, paths, patient leakage)"
IMAGES = "every image exists and decodes"
DEGENERATE = "no degenerate images (far smaller than the network input, or constant)"
POSITIVES = "training positives per class"
PATIENTS = "patients per split (none shared)"
BUILDS = "network and loss build"
PRETRAINED = "pretrained weights match the network"
BATCHES = "no last training batch of one image (batch norm)"
TESTS = "test sets for the test after training (test_and_deploy)"
RESUME = "checkpoint to resume from"
OUTPUTS = "output folders writable"


def _image_size(parser) -> int | None:
    """The config's ``image_size`` (the network input side), ``None`` when it has none that is a number."""
    try:
        size = parser.get_parsed_content("image_size") if "image_size" in parser else None
    except Exception:  # a broken value is the other checks' to report
        return None
    return int(size) if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def check(config_file="bundle/configs/train.json", **overrides) -> int:
    """Check a training config, its data and its files; print a report; return 0 if none fails, else 1."""
    from ..data.datalist import DataList, DataListError, preflight_mode
    from ..data.real_datasets import DataListWithTests
    from ..training.checkpoints import find_checkpoint

    report = _Report()
    state: dict = {}

    def parse():
        from ..flags import check_settings

        state["parser"] = _parser(config_file, overrides)
        check_settings({k: state["parser"].get(k) for k in NUMERIC_IDS if k in state["parser"]})
        return f"{config_file}" + (f" with overrides {overrides}" if overrides else "")

    if not report.run(CONFIG, parse):
        return report.summary()
    parser = state["parser"]

    def properties():
        from monai.bundle.properties import TrainProperties
        from monai.utils import BundleProperty, BundlePropertyConfig

        missing = [p[BundlePropertyConfig.ID] for p in TrainProperties.values()
                   if p.get(BundleProperty.REQUIRED, False) and p[BundlePropertyConfig.ID] not in parser]
        if missing:
            raise KeyError(f"the config lacks id(s) MONAI's training workflow needs: {missing}")
        return ""

    report.run(IDS, properties)

    def datalist():
        with preflight_mode():  # every problem of the list, then every bad image, in this one run
            dl = parser.get_parsed_content("data")  # train.json opens its datalist (a component or a path) as data
        if not isinstance(dl, (DataList, DataListWithTests)):
            raise TypeError("'datalist' must build a custom.DataList (or a data list with test lists), got "
                            f"{type(dl).__name__}")
        state["datalist"] = dl
        if dl.problems:
            raise DataListError(dl.problems_message())
        sizes = ", ".join(f"{s} {len(dl.items(s))}" for s in dl.splits)
        return f"{dl.path} ({len(dl.classes)} classes; {sizes})"

    report.run(DATALIST, datalist)

    def images():
        from ..data.messages import bad_images_message

        if "datalist" not in state:  # a list with bad rows is built, and its images are checked too
            raise CheckSkipped("needs a data list that can be read")
        dl = state["datalist"]
        total = dl.num_images
        size = getattr(dl, "image_size", None) or _image_size(parser)
        bad, state["degenerate"] = dl.inspect_images(size)  # one read per image for both checks
        if not bad:
            return f"all {total} images decode"
        if getattr(dl, "on_bad_image", "error") == "skip":
            what = "missing or unreadable and will be skipped (on_bad_image='skip')"
            raise CheckWarning(bad_images_message(dl.path, dl.dataset_dir, bad, total, what, MAX_IMAGES_LISTED))
        raise FileNotFoundError(bad_images_message(dl.path, dl.dataset_dir, bad, total, limit=MAX_IMAGES_LISTED))

    report.run(IMAGES, images)

    def degenerate():
        from ..data.datalist import DataListError
        from ..data.messages import DEGENERATE_REFUSED, bad_images_message

        if "degenerate" not in state:
            raise CheckSkipped("needs the images decoded by the image check")
        found, dl = state["degenerate"], state["datalist"]
        if not found:
            return "none"
        if getattr(dl, "on_degenerate_image", "warn") == "refuse":
            raise DataListError(bad_images_message(dl.path, dl.dataset_dir, found, dl.num_images, DEGENERATE_REFUSED,
                                                   MAX_IMAGES_LISTED))
        names = ", ".join(f"{path} ({why})" for _, _, path, why in found[:MAX_DEGENERATE_NAMED])
        more = f" and {len(found) - MAX_DEGENERATE_NAMED} more" if len(found) > MAX_DEGENERATE_NAMED else ""
        raise CheckWarning(f"{len(found)} image(s) are degenerate and will be trained on and scored "
                           f"(on_degenerate_image='refuse' in the custom.DataList stops on them): {names}{more}")

    report.run(DEGENERATE, degenerate)

    def positives():
        dl = state["datalist"]
        counts = dl.labels("training").sum(axis=0)
        empty = [c for c, n in zip(dl.classes, counts) if n == 0]
        text = ", ".join(f"{c} {int(n)}" for c, n in zip(dl.classes, counts))
        if empty:
            raise CheckWarning("classes without a positive training label (training goes on with their prior floored "
                               f"to 0.5/N; their AUC is undefined): {empty}; counts: {text}")
        return text

    report.run(POSITIVES, positives, needs=(DATALIST,))

    def patients():
        dl = state["datalist"]
        per = {s: len({i["patient"] for i in dl.items(s) if "patient" in i}) for s in dl.splits}
        return ", ".join(f"{s} {n}" for s, n in per.items())

    report.run(PATIENTS, patients, needs=(DATALIST,))

    def builds():
        network = parser.get_parsed_content("network_def")
        with warnings.catch_warnings():  # the class-prior warning is the positives check's
            warnings.filterwarnings("ignore", message="classes without positive training labels")
            loss = parser.get_parsed_content("loss")
        return f"{type(network).__name__}, {type(loss).__name__}"

    report.run(BUILDS, builds, needs=(DATALIST,))

    def batches():
        from ..training.engine import last_batch_problem

        dl, batch_size = state["datalist"], int(parser.get_parsed_content("batch_size"))
        loader = SimpleNamespace(batch_size=batch_size, drop_last=False, sampler=None, dataset=dl.items("training"))
        problem = last_batch_problem(loader, parser.get_parsed_content("network_def", lazy=False))
        if problem:
            raise ValueError(problem)
        return f"{len(dl)} images in batches of {batch_size}"

    report.run(BATCHES, batches, needs=(DATALIST,))

    def tests():
        if not as_bool(parser.get_parsed_content("test_and_deploy"), "test_and_deploy"):
            return "test_and_deploy is off: no test after training"
        return ", ".join(t.name for t in parser.get_parsed_content("test_report").test_sets())

    report.run(TESTS, tests, needs=(DATALIST,))

    weights = parser.get("pretrained_weights", "")
    if weights:
        def pretrained():
            from ..networks import load_pretrained

            load_pretrained(parser.get_parsed_content("network_def", lazy=False), weights)
            return str(weights)

        report.run(PRETRAINED, pretrained)

    resume = parser.get("resume", False)
    try:
        resuming = as_bool(resume, "resume")
    except ValueError:  # a checkpoint file, or "latest"
        resuming = True

    if resuming:
        def resumable():
            from ..networks import read_checkpoint
            from ..record import RunRecord

            path = find_checkpoint(resume, str(parser.get_parsed_content("ckpt_dir")))
            ckpt = read_checkpoint(path)
            trainer = ckpt.get("trainer") if isinstance(ckpt, dict) else None
            if not isinstance(trainer, dict) or "run_record" not in ckpt:
                raise ValueError(f"checkpoint {path} is not a training checkpoint of this bundle (it holds "
                                 f"{sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__})")
            epoch = trainer["iteration"] // max(1, trainer["epoch_length"])
            if "datalist" in state:
                dl = state["datalist"]
                RunRecord(dl.classes, len(dl), dl).check(ckpt["run_record"], path)
            seed, own = (ckpt["run_record"].get("recipe") or {}).get("seed"), parser.get_parsed_content("seed")
            if seed is not None and seed != own:
                raise CheckWarning(f"{path} (epoch {epoch}) was trained with seed {seed}, this run has seed {own}: "
                                   "the rest of the run will not match an uninterrupted one")
            return f"{path} (epoch {epoch})"

        report.run(RESUME, resumable)

    def outputs():
        folders = [parser.get_parsed_content(k) for k in ("ckpt_dir", "output_dir") if k in parser]
        for f in folders:
            _writable(f)
        return ", ".join(str(f) for f in folders)

    report.run(OUTPUTS, outputs)
    return report.summary()


def main(config_file="bundle/configs/train.json", **overrides) -> None:
    sys.exit(check(config_file, **overrides))
