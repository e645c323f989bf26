"""A built data list's summary file name, and the summary as a person reads it (the files are written by
:func:`custom.files.write_json`)."""

from __future__ import annotations

from pathlib import Path

from .core import SPLITS


def summary_path(output) -> Path:
    """``lists/nih.json.gz`` -> ``lists/nih.summary.json``."""
    output = Path(output)
    name = output.name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(name + ".summary.json")


def format_summary(summary: dict, max_terms: int = 15) -> str:
    """Human-readable summary of a build."""
    lines = [
        f"data list: {summary['dataset']} / {summary['scheme']}"
        + (f" / match {summary['match']}" if summary.get("match") else "")
    ]
    if summary.get("split_method"):
        lines.append(f"split: {summary['split_method']}")
    lines.append(f"rows read: {summary['rows_read']:,}")
    if summary["dropped"]:
        lines.append("dropped:")
        for reason, n in summary["dropped"].items():
            lines.append(f"  {n:>8,}  {reason}")
            if reason.startswith("positive for a class outside") and summary["dropped_out_of_scheme_by_class"]:
                lines.append(
                    "  out-of-scheme positives among them: "
                    + ", ".join(f"{c} {n:,}" for c, n in summary["dropped_out_of_scheme_by_class"].items())
                )
    present = [s for s in SPLITS if summary["images"][s]]
    lines.append(
        "images:   "
        + ", ".join(f"{s} {summary['images'][s]:,}" for s in present)
        + f"  (total {summary['images']['total']:,})"
    )
    lines.append("patients: " + ", ".join(f"{s} {summary['patients'][s]:,}" for s in present))
    classes = list(summary["positives"]["training" if summary["images"]["training"] else present[0]]) if present else []
    if classes:
        width = max(len(c) for c in classes)
        lines.append("positives per class:")
        lines.append(f"  {'class':<{width}}  " + "  ".join(f"{s:>10}" for s in present))
        for c in classes:
            lines.append(f"  {c:<{width}}  " + "  ".join(f"{summary['positives'][s][c]:>10,}" for s in present))
    if summary.get("labelled_classes") is not None:
        lines.append(f"labelled classes (others are 0 and not evaluable): {summary['labelled_classes']}")
    terms = summary["unmapped_terms"]
    if terms:
        unknown = [t for t, v in terms.items() if not v["known"]]
        lines.append(
            f"terms mapped to no class: {len(terms)} distinct"
            + (f", {len(unknown)} not in the dataset's published vocabulary: {unknown[:10]}" if unknown else "")
        )
        shown = list(terms.items())[:max_terms]
        lines += [f"  {v['rows']:>8,}  {t!r}" + ("" if v["known"] else "  (unknown)") for t, v in shown]
        if len(terms) > max_terms:
            lines.append(f"  ... {len(terms) - max_terms} more in the saved summary")
    if summary.get("other_match"):
        om = summary["other_match"]
        split = "test" if summary["images"]["test"] else "training"
        diff = [
            f"{c} {summary['positives'][split][c]:,} -> {n:,}"
            for c, n in om["positives"].items()
            if n != summary["positives"][split].get(c)
        ]
        lines.append(
            f"with --match {om['match']}: {om['images']:,} images"
            + (f"; positives that differ: {', '.join(diff)}" if diff else "; same positives")
        )
    return "\n".join(lines)
