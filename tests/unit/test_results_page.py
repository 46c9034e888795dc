"""docs/results.md's classifier table is the one bench/results.py writes from its JSON, never edited by hand."""
import json
from pathlib import Path

from bench import results

ROOT = Path(__file__).resolve().parents[2]


def test_results_page_table_is_generated_from_the_measured_json():
    page = (ROOT / "docs" / "results.md").read_text()
    shown = page.split(results.BEGIN, 1)[1].split(results.END, 1)[0].strip()
    measured = json.loads((ROOT / "bench" / "results_h100.json").read_text())
    assert shown == results.table(measured)


def test_into_replaces_only_the_table_between_the_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"# T\n\nbefore\n{results.BEGIN}\n| old |\n{results.END}\nafter\n")
    results.into(page, "| new |")
    assert page.read_text() == f"# T\n\nbefore\n{results.BEGIN}\n| new |\n{results.END}\nafter\n"
