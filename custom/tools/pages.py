"""The figures of the pages, generated from the result files (``python -m custom.cli docs``).

A page holds a generated block between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``;
:func:`blocks` computes every block from its source, :func:`refresh` writes them into the pages
(and ``tests/test_docs.py`` fails when a page differs from what :func:`blocks` gives):

- the noise benchmark's figures (README, the bundle card, bundle/docs/results.md): from the run
  records of ``bundle/docs/noise_benchmark/runs/`` that its ``results.csv`` lists, through the
  benchmark's own table and target functions (:mod:`custom.tools.noise_benchmark`);
- the default run's test AUCs (the card): ``eval_metrics`` of ``bundle/configs/metadata.json``;
- the number of tests (bundle/docs/development.md): what ``pytest --collect-only`` collects.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "bundle" / "docs" / "noise_benchmark"
#: the pages with generated blocks, relative to the repository root.
PAGES = ("README.md", "bundle/docs/README.md", "bundle/docs/results.md", "bundle/docs/development.md")
#: a generated block of a page: its name and the text between the markers.
BLOCK = re.compile(r"<!-- generated:(?P<name>[a-z0-9_-]+) -->\n(?P<body>.*?)<!-- /generated:(?P=name) -->", re.DOTALL)
#: blocks that need the test collection (a subprocess), computed only when asked for.
TEST_BLOCKS = ("tests",)


def load_benchmark(folder=BENCHMARK) -> tuple[dict, dict]:
    """The main and clean runs of the noise benchmark's default methods on every draw that ``results.csv`` holds
    (the default plan's two draws, and the head-to-head rule's new draws once run) and their run records
    (``runs/<name>.json``).

    Raises:
        FileNotFoundError: ``results.csv`` or the record of a run it lists is missing.
        ValueError: ``results.csv`` lacks a run of the default plan.
    """
    import pandas as pd

    from .noise_benchmark import DEFAULT_DATA_SEEDS, DEFAULT_METHODS, build_plan, split_list, unique_runs

    folder = Path(folder)
    table = folder / "results.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: run `python -m custom.cli noise_benchmark --output {folder}`")
    rows = pd.read_csv(table)
    methods = split_list(DEFAULT_METHODS)
    main = rows[(rows["noise"] == "report") & rows["method"].isin(methods)]
    drawn = sorted(set(main["data_seed"].astype(int)) | set(split_list(DEFAULT_DATA_SEEDS, int)))
    listed = set(rows["name"])
    plan = build_plan("report", methods, data_seeds=drawn)
    plan = {part: runs for part, runs in plan.items() if part in ("main", "clean")}
    records = {}
    for run in unique_runs(plan):
        if run.name not in listed:
            raise ValueError(f"{table} has no row for run {run.name} of the default plan")
        path = folder / "runs" / f"{run.name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"run record {path} not found (listed in {table})")
        records[run.name] = json.loads(path.read_text())
    return plan, records


def _pooled_gaps(plan: dict, records: dict) -> dict:
    from .noise_benchmark.tables import paired_gaps

    return paired_gaps(plan["main"], records, "bce")


def _mean(values) -> float:
    from .noise_benchmark.tables import mean_interval

    return mean_interval(values)[0]


def _pooled_row(plan: dict, records: dict, method: str) -> dict:
    """The row of ``method`` over every draw in the benchmark's own main table (:func:`results_table`)."""
    from .noise_benchmark.tables import results_table

    rows = [r for r in results_table(plan["main"], records, by_draw=False) if r["method"] == method]
    if not rows:
        raise ValueError(f"the benchmark's main table has no `{method}` row")
    return rows[0]


def summary_table(plan: dict, records: dict) -> str:
    """The card's results table: BCE's mean AUC, each method's paired difference to it (every draw)."""
    from ..evaluation.tables import markdown_table
    from .noise_benchmark.tables import COMPARED_HEADERS, COMPARED_KEYS, ci_text
    from .noise_benchmark.targets import default_recipe

    default = default_recipe(plan["main"], records)
    gaps = _pooled_gaps(plan, records)
    bce = _pooled_row(plan, records, "bce")
    body = [["`bce` (mean AUC)", *(f"{_mean(bce[k]):.1f}" for k in COMPARED_KEYS), f"{_mean(bce['fitted_last']):.0f}%"]]
    for method, gap in gaps.items():
        label = f"`{method}` - `bce`" + (" (**default**)" if method == default else "")
        fitted = _mean(_pooled_row(plan, records, method)["fitted_last"])
        body.append([label, *(ci_text(gap[k]) for k in COMPARED_KEYS), f"{fitted:.0f}%"])
    return markdown_table(["method", *COMPARED_HEADERS, "wrong labels fitted, last"], body, align="first-left")


def left_out_text(runs, records: dict) -> str:
    """Which diseases each split's mean leaves out, per draw, read from every run's record."""
    from .noise_benchmark.tables import draws, of_draw

    parts = []
    for split, name in (("test", "`test`"), ("test_shifted", "`test_shifted`")):
        per_draw = []
        for draw in draws(runs):
            seen = {tuple((records[r.name].get("left_out") or {}).get(split, [])) for r in of_draw(runs, draw)}
            if len(seen) > 1:
                raise ValueError(f"the runs of draw {draw} leave out different diseases on {split}: {sorted(seen)}")
            (left,) = seen
            per_draw.append(f"draw {draw}: " + (", ".join(left) + " left out" if left else "none left out"))
        parts.append(f"{name} ({'; '.join(per_draw)})")
    return "Diseases with fewer than 10 positives in a split are left out of its mean: " + ", ".join(parts) + "."


def headline(plan: dict, records: dict) -> str:
    """README's results summary: the default recipe's paired gaps to BCE and the wrong labels fitted."""
    from .noise_benchmark.tables import ci_text, draws
    from .noise_benchmark.targets import default_recipe

    main = plan["main"]
    default = default_recipe(main, records)
    gap = _pooled_gaps(plan, records)[default]
    fitted = {m: _mean(_pooled_row(plan, records, m)["fitted_last"]) for m in ("bce", default)}
    return (
        f"On the noise benchmark ({len(gap['seeds'])} paired runs over {len(draws(main))} draws of the synthetic set "
        f"with report-mining noise), the default `{default}` is ahead of plain BCE at the last epoch by "
        f"**{ci_text(gap['last_test'])}** mean-AUC points on the clean test split and "
        f"**{ci_text(gap['last_test_shifted'])}** on the shifted one, and at the checkpoint selected on noisy "
        f"validation by {ci_text(gap['selected_test'])} and {ci_text(gap['selected_test_shifted'])} (95% "
        f"intervals). By the last epoch BCE sides with {fitted['bce']:.0f}% of the wrong training labels, "
        f"`{default}` with {fitted[default]:.0f}%: NVUM slows memorisation, it does not stop it."
    )


def timing_text(plan: dict, records: dict, folder=BENCHMARK) -> str:
    """The default plan's runs, their time per run and CPU time (records), and the command's wall time."""
    from .noise_benchmark import unique_runs

    runs = unique_runs(plan)
    seconds = [records[r.name]["seconds"] for r in runs]
    cpu = sum(records[r.name].get("cpu_seconds") or 0.0 for r in runs) / 60
    text = (f"The default plan's {len(runs)} runs took {min(seconds):.0f}-{max(seconds):.0f} s each "
            f"({cpu:.1f} min of CPU in all, one thread per run)")
    wall = re.search(r"([0-9.]+) min wall for the command", (Path(folder) / "results.md").read_text())
    return text + (f"; the command, 2 processes at a time, {wall.group(1)} min wall." if wall else ".")


def default_run_text(metadata=ROOT / "bundle" / "configs" / "metadata.json") -> str:
    """The default run's mean test AUCs over the diseases, as ``configs/metadata.json`` records them."""
    metrics = json.loads(Path(metadata).read_text())["eval_metrics"]
    return (f"Mean AUC over the diseases: {metrics['mean_auc_diseases_test']:.3f} on the clean test split, "
            f"{metrics['mean_auc_diseases_test_shifted']:.3f} on the shifted one (`eval_metrics` of "
            f"`configs/metadata.json`).")


def collected_tests(root=ROOT) -> tuple[int, int]:
    """``(all, quick lane)``: the tests ``pytest --collect-only`` finds in ``tests/``, and those not marked slow."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "tests"],
                         cwd=root, capture_output=True, text=True)
    found = re.search(r"(\d+)/(\d+) tests collected|(\d+) tests? collected", out.stdout)
    if out.returncode not in (0, 5) or not found:
        raise RuntimeError(f"pytest --collect-only failed (exit status {out.returncode}):\n{out.stdout[-2000:]}"
                           f"{out.stderr[-2000:]}")
    if found.group(3):
        return int(found.group(3)), int(found.group(3))
    return int(found.group(2)), int(found.group(1))


def tests_text(root=ROOT) -> str:
    total, quick = collected_tests(root)
    return (f"The suite has {total} tests; the quick lane (`-m \"not slow\"`) runs {quick} of them and leaves "
            f"out the {total - quick} marked `slow`.")


def blocks(with_tests: bool = False) -> dict[str, str]:
    """Every generated block, name -> Markdown (``with_tests``: also the test count, a pytest collection)."""
    plan, records = load_benchmark()
    out = {
        "results-headline": headline(plan, records),
        "results-table": summary_table(plan, records),
        "results-diseases": left_out_text(plan["main"], records),
        "results-time": timing_text(plan, records),
        "default-run": default_run_text(),
    }
    from .noise_benchmark.targets import choose_default, choose_default_head_to_head

    out["results-rule"] = ("The first rule on the committed runs: " + choose_default(plan["main"], records)["text"]
                           + "\n\nThe head-to-head rule (it decides once its draws are run): "
                           + choose_default_head_to_head(plan["main"], records)["text"])
    if with_tests:
        out["tests"] = tests_text()
    return out


def render(text: str, generated: dict[str, str], where: str = "page") -> str:
    """``text`` with each generated block it holds replaced by ``generated[name]`` (kept when absent).

    Raises:
        ValueError: a block of the page has no generator.
    """
    def replace(match):
        name = match.group("name")
        if name not in generated:
            if name in TEST_BLOCKS:
                return match.group(0)
            raise ValueError(f"{where}: no generator for the block <!-- generated:{name} --> "
                             f"(known: {', '.join(sorted(generated))})")
        return f"<!-- generated:{name} -->\n{generated[name].rstrip()}\n<!-- /generated:{name} -->"

    return BLOCK.sub(replace, text)


def refresh(tests: bool = True, root=ROOT) -> list[str]:
    """Rewrite the generated blocks of :data:`PAGES`; the pages that changed."""
    generated = blocks(with_tests=tests)
    changed = []
    for name in PAGES:
        path = Path(root) / name
        text = path.read_text()
        new = render(text, generated, name)
        if new != text:
            path.write_text(new)
            changed.append(name)
    return changed
