"""What a resumed run changed: the checkpoint's run record against the settings it is resumed with.

A resume continues one experiment. A changed loss, NVUM setting, learning rate or schedule, batch size, image size,
network, class list or training list (its content or its order: each image owns a row of the NVUM memory) would
make the rest of the run another experiment while its record claimed the first one, so resume stops and lists each
difference. Some settings are safe to change (:data:`SAFE_TO_CHANGE`), and ``--resume_changes`` names the changes to
accept anyway (``all`` accepts every one); accepted changes are written into the run record (``resumed``), with the
epoch they took effect at, so the record never claims values a part of the run did not use.
"""

from __future__ import annotations

#: settings a resumed run may change without becoming another experiment (bundle/docs/reliability.md).
SAFE_TO_CHANGE = (
    "recipe.max_epochs (upwards; a run cannot resume beyond its max_epochs)",
    "num_workers", "val_interval", "mlflow, experiment_name, run_name", "test_and_deploy", "output_dir",
    "datalist path and dataset_dir, when the training list's content and order are the same",
)

#: record entries that are not settings of the experiment: never compared.
NOT_COMPARED = ("datalist", "dataset_dir", "thresholds", "threshold_rule", "threshold_notes", "threshold_split",
                "resumed")


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def record_changes(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """``(setting, in the checkpoint, now)`` for every setting of the experiment that differs between the
    checkpoint's run record ``saved`` and the resumed run's ``current`` (both :meth:`RunRecord.state_dict`
    dicts); ``recipe.max_epochs`` counts only when it went down. Settings absent from an older record are not
    compared."""
    old = _flatten({k: v for k, v in saved.items() if k not in NOT_COMPARED})
    new = _flatten({k: v for k, v in current.items() if k not in NOT_COMPARED})
    changes = []
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        if key == "recipe.max_epochs":
            if a is not None and b is not None and int(b) < int(a):
                changes.append((key, a, b))
        elif a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)):
            changes.append((key, a, b))
    return changes


def accepted(changes, allow) -> tuple[list, list]:
    """Split ``changes`` into those ``allow`` accepts and the rest. ``allow``: none (``None``, empty, ``false``),
    every change (``all``, ``true``), or setting names (``learning_rate`` or ``recipe.learning_rate``, ``nvum.loss``,
    ...; a list, or a comma-separated string)."""
    from ..flags import truth_word

    if isinstance(allow, str):
        word = True if allow.strip().lower() == "all" else truth_word(allow)
        allow = [n.strip() for n in allow.strip("[]").split(",")] if word is None else word
    if allow is None or allow is False or allow == []:
        return [], list(changes)
    if allow is True:
        return list(changes), []
    names = [str(n).strip().strip("'\"") for n in allow if str(n).strip()]
    ok, refused = [], []
    for change in changes:
        key = change[0]
        (ok if any(key == n or key.endswith("." + n) for n in names) else refused).append(change)
    return ok, refused


def changes_message(checkpoint, refused) -> str:
    """The message that stops a resume: each difference, and how to continue anyway."""
    lines = "\n".join(f"  {key}: {old!r} in the checkpoint, {new!r} now" for key, old, new in refused)
    names = ",".join(key.split(".", 1)[-1] if key.startswith(("recipe.", "nvum.")) else key for key, _, _ in refused)
    return (f"resuming {checkpoint} with settings that differ from the run it continues:\n{lines}\n"
            "The rest of the run would be another experiment. Resume with the checkpoint's settings, start a new run "
            f"(--resume false, or another --bundle_root), or accept these changes with --resume_changes \"{names}\" "
            "(recorded in model.json as 'resumed').")
