"""The pages: their figures held to the result files, their size, their links."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from custom.deploy.layout import page_links
from custom.tools import pages

ROOT = Path(__file__).resolve().parents[1]
#: every page: the front page and the bundle's docs (the generated benchmark pages included).
ALL_PAGES = [ROOT / "README.md", *sorted((ROOT / "bundle" / "docs").rglob("*.md"))]


def test_every_generated_block_of_the_pages_is_what_its_source_gives_now():
    """`python -m custom.cli docs` would change nothing: each results figure of README, the card and
    results.md is the one the committed benchmark runs and metadata.json give."""
    generated = pages.blocks()
    found = set()
    for name in pages.PAGES:
        text = (ROOT / name).read_text()
        found |= {m.group("name") for m in pages.BLOCK.finditer(text)}
        assert pages.render(text, generated, name) == text, f"{name} is stale: run `python -m custom.cli docs`"
    assert set(generated) <= found, f"blocks no page shows: {sorted(set(generated) - found)}"


def test_a_figure_that_differs_from_the_runs_is_found_and_refreshed(tmp_path):
    generated = pages.blocks()
    page = (ROOT / "bundle" / "docs" / "README.md").read_text()
    table = generated["results-table"]
    bce = next(line for line in table.splitlines() if line.startswith("| `bce` (mean AUC)")).split("|")[2].strip()
    changed = page.replace(table, table.replace(f"| {bce} |", f"| {float(bce) + 0.1:.1f} |", 1))
    assert changed != page and pages.render(changed, generated) == page
    with pytest.raises(ValueError, match="no generator for the block <!-- generated:nope -->"):
        pages.render("<!-- generated:nope -->\nx\n<!-- /generated:nope -->\n", generated)


def test_the_results_figures_are_recomputed_from_the_run_records():
    """Independent of the table functions: the default's last-epoch gap to BCE, paired by draw and
    seed, and BCE's mean selected AUC on the test split (no disease left out there), straight from
    the run records; and the diseases each draw leaves out of the shifted split."""
    import numpy as np

    from custom.tools.noise_benchmark import default_recipe

    plan, records = pages.load_benchmark()
    default = default_recipe(plan["main"], records)
    by = {(r["method"], r["data_seed"], r["seed"]): r for r in records.values() if r["noise"] == "report"}
    pairs = [(d, s) for (m, d, s) in by if m == default]
    assert len(pairs) == 20 and {d for d, _ in pairs} == {0, 1, 2, 3}  # the four draws the pages read
    # the pooled figures average the diseases every draw keeps (draw 2 leaves Hernia out of the test split)
    classes = json.loads((ROOT / "bundle" / "configs" / "common.json").read_text())["classes"]
    dropped = {c for r in by.values() for c in r["left_out"]["test"]}
    keep = [i for i, c in enumerate(classes) if c != "No Finding" and c not in dropped]
    assert dropped == {"Hernia"} and len(keep) == 12

    def auc(record, when):
        return 100 * np.mean([record[when]["test_classes"]["test"][i] for i in keep])

    gaps = [auc(by[default, d, s], "last") - auc(by["bce", d, s], "last") for d, s in pairs]
    bce = np.mean([auc(by["bce", d, s], "best") for d, s in pairs])
    text = (ROOT / "bundle" / "docs" / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| `{default}` - `bce` (**default**)"))
    assert row.split("|")[4].strip().startswith(f"{np.mean(gaps):+.1f} [")
    assert next(line for line in text.splitlines() if line.startswith("| `bce` (mean AUC)")).split("|")[2].strip() \
        == f"{bce:.1f}"
    shifted = {d: r["left_out"]["test_shifted"] for (m, d, s), r in by.items()}
    diseases = (ROOT / "bundle" / "docs" / "results.md").read_text()
    for draw, left in shifted.items():
        assert f"draw {draw}: {', '.join(left)} left out" in diseases


def test_results_pages_state_no_disease_count_or_copied_benchmark_timing():
    for name in ("README.md", "bundle/docs/README.md", "bundle/docs/results.md"):
        text = (ROOT / name).read_text()
        assert not re.search(r"over (the )?13 diseases", text), name
        assert "145-162 s" not in text and "every disease but" not in text, name


@pytest.mark.slow
def test_the_stated_test_count_is_what_pytest_collects():
    text = (ROOT / "bundle" / "docs" / "development.md").read_text()
    block = re.search(r"<!-- generated:tests -->\n(.*?)<!-- /generated:tests -->", text, re.DOTALL)
    assert block, "development.md has no generated test count"
    assert block.group(1).strip() == pages.tests_text(), "run `python -m custom.cli docs` to restate the count"


#: the pages a person writes: README and bundle/docs/*.md (the set that was 204 KB); the tables that the benchmark
#: commands write under bundle/docs/noise_benchmark/ and bundle/docs/scaling/ are result files, held to a bound of
#: their own.
WRITTEN_PAGES = [ROOT / "README.md", *sorted((ROOT / "bundle" / "docs").glob("*.md"))]


def test_the_pages_stay_small():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_bytes()) for p in WRITTEN_PAGES}
    assert sizes["README.md"] <= 6 * 1024, sizes["README.md"]
    assert sum(sizes.values()) <= 110 * 1024, sizes
    generated = {p.relative_to(ROOT).as_posix(): len(p.read_bytes()) for p in ALL_PAGES if p not in WRITTEN_PAGES}
    assert sum(generated.values()) <= 40 * 1024, generated


def _headings(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub writes them."""
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.MULTILINE)}


def test_every_relative_link_of_the_pages_resolves():
    """Every linked file exists, and a link to a heading of a page (``page.md#anchor``) finds it."""
    broken = []
    for page in ALL_PAGES:
        for link in page_links(page.read_text()):
            if not (page.parent / link).exists():
                broken.append(f"{page.relative_to(ROOT)}: {link}")
        text = re.sub(r"```.*?```|`[^`\n]*`", "", page.read_text(), flags=re.DOTALL)
        for target, anchor in re.findall(r"\]\(([^)#\s]*\.md)?#([\w-]+)\)", text):
            linked = (page.parent / target) if target else page
            if linked.is_file() and anchor not in _headings(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, broken


def test_the_link_check_finds_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](missing.md) `[b](in_code.md)` [c](https://x.org/y.md)\n")
    assert [link for link in page_links(page.read_text()) if not (tmp_path / link).exists()] == ["missing.md"]
