"""bench/report.py: bench results (JSON as the benches write it) -> docs/performance.md and
the builder chart, the same bytes for the same JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.helpers import REPO

MACHINE = {"date": "2026-01-02 03:04 UTC", "cpus": 2, "cpu": "Test CPU", "kernel": "6.1.0",
           "python": "3.11.2", "engine": "Docker 20.10.24, overlay2"}


def builder_result() -> dict:
    rows = {"direct": ([12.0, 11.0, 13.0], [3.0, 3.5, 3.25], 126.3, 2.6),
            "careful": ([40.0, 39.0, 41.0], [39.5, 40.0, 41.0], 163.9, 164.0)}
    return {
        "bench": "builder", "title": "Builder step vs hand-written Dockerfiles",
        "machine": MACHINE, "settings": {"rounds": 3, "skip_only": False},
        "tables": [{"title": "Build and push", "units": {
            "cold": "s", "warm": "s", "pushed": "MB", "warm pushed": "MB"}, "rows": [
            {"name": name, "label": f"the {name} way", "values": {
                "cold": cold, "warm": warm, "pushed": pushed, "warm pushed": warm_pushed}}
            for name, (cold, warm, pushed, warm_pushed) in rows.items()]}],
        "ratios": [{"name": "direct / careful, cold", "value": 0.3, "unit": "x", "goal": 0.4},
                   {"name": "ours / careful, cold", "value": 0.6, "unit": "x", "goal": 0.5},
                   {"name": "overhead", "value": 0.25, "unit": "s", "goal": None}],
        "checks": {"same digest": "yes"}}


def report(results: Path, docs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "bench" / "report.py"),
                           "--results", str(results), "--docs", str(docs)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_results_become_tables_ratios_and_a_chart_the_same_every_time(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "builder.json").write_text(json.dumps(builder_result()))
    for docs in (tmp_path / "docs", tmp_path / "again"):
        assert report(results, docs).returncode == 0
    page = (tmp_path / "docs" / "performance.md").read_text()
    assert "Measured 2026-01-02 03:04 UTC on 2 CPUs (Test CPU)" in page
    assert "Docker 20.10.24, overlay2; settings: rounds 3." in page
    assert "| | cold (s) | warm (s) | pushed (MB) | warm pushed (MB) |" in page
    assert "| direct: the direct way | 12.0 (11.0-13.0) | 3.2 (3.0-3.5) | 126.3 | 2.6 |" in page
    assert "- direct / careful, cold: **0.30x** (goal <= 0.4x: met)" in page
    assert "- ours / careful, cold: **0.60x** (goal <= 0.5x: not met)" in page
    assert "- overhead: **+0.25 s**" in page
    assert "- same digest: yes" in page
    assert "![Builder step against hand-written Dockerfiles](performance-builder.png)" in page
    # a bench with no results file yet says so instead of numbers
    runtime = page[page.index("## Runtime step"):]
    assert "Not measured yet: run `make bench`." in runtime.split("## ")[1]
    for name in ("performance.md", "performance-builder.png"):
        first, second = (tmp_path / docs / name for docs in ("docs", "again"))
        assert first.read_bytes() == second.read_bytes(), name
    assert (tmp_path / "docs" / "performance-builder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_results_every_bench_is_not_measured_and_no_chart_stays(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "performance-builder.png").write_bytes(b"an old chart")
    assert report(tmp_path / "none", docs).returncode == 0
    page = (docs / "performance.md").read_text()
    assert page.count("Not measured yet: run `make bench`.") == 7
    assert "Not measured yet: run `.venv/bin/python bench/builder_bench.py --skip-only`." in page
    assert "Measured" not in page
    assert not (docs / "performance-builder.png").exists()


def test_a_file_no_bench_wrote_is_one_line_and_exit_2(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    broken = builder_result()
    del broken["tables"][0]["rows"][0]["values"]
    (results / "builder.json").write_text(json.dumps(broken))
    result = report(results, tmp_path / "docs")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"report: {results / 'builder.json'}: not what a bench writes (see bench/result.py)"]
    (results / "builder.json").write_text("{")
    result = report(results, tmp_path / "docs")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "docs" / "performance.md").exists()


def test_docs_performance_is_the_report_of_the_committed_results(tmp_path: Path) -> None:
    assert report(REPO / "bench" / "results", tmp_path).returncode == 0
    assert (tmp_path / "performance.md").read_text() == \
        (REPO / "docs" / "performance.md").read_text(), "run make perf-report"
