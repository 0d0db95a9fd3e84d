"""bench/results/*.json (written by the benches) -> docs/performance.md, with a chart of the
builder bench (docs/performance-builder.png). The same JSON gives the same bytes.

Usage: python bench/report.py [--results DIR] [--docs DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after the backend is chosen

REPO = Path(__file__).resolve().parents[1]
CHART = "performance-builder.png"
# bench name -> (heading, the command that measures it); the page lists them in this order
BENCHES = {
    "builder": ("Builder step against hand-written Dockerfiles", "bench/builder_bench.py"),
    "builder-skip": ("The skip decision alone", "bench/builder_bench.py --skip-only"),
    "executor": ("In-cluster builder plans through the local runner",
                 "bench/executor_bench.py"),
    "conda": ("Conda packages against the same environment from PyPI; direct against Docker",
              "bench/conda_bench.py"),
    "reproducible": ("The cost of reproducible images", "bench/reproducible_bench.py"),
    "hash": ("Hashing a codeset with large data files", "bench/hash_bench.py"),
    "runtime": ("Runtime step against plain `mlflow run`", "bench/runtime_bench.py"),
    "server": ("The tracking server's token gate", "bench/server_bench.py"),
    "gpu-env": ("PyTorch with its CUDA wheels: the direct builder against Dockerfiles",
                "bench/gpu_env_bench.py"),
}
# run by hand, not by `make bench`: a mode of one bench, an hour-long one
BY_HAND = frozenset({"builder-skip", "gpu-env"})
HEADER = """\
# Performance

Written by `bench/report.py` from `bench/results/*.json`: do not edit by hand. `make bench`
measures and rewrites both; `make perf-report` rewrites this page from the results as they
are. How each bench measures (rounds, order, what is cold and warm) is said at the top of
its script.
"""


class BadResult(Exception):
    """A results file that is not what a bench writes."""


def number(value: float) -> str:
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3f}"


def cell(value: Any) -> str:
    """A number as is, samples as 'median (min-max)', None as 'not measured'."""
    if value is None:
        return "not measured"
    if isinstance(value, list):
        if len(value) == 1:
            return number(value[0])
        return f"{number(statistics.median(value))} ({number(min(value))}-{number(max(value))})"
    return number(value)


def median(value: Any) -> float:
    return statistics.median(value) if isinstance(value, list) else value


def ratio_line(entry: dict) -> str:
    """'- name: **0.32x** (goal <= 0.4: met)'; a goal is the largest value wanted."""
    value, unit, goal = entry["value"], entry["unit"], entry["goal"]
    suffix = "x" if unit == "x" else f" {unit}"
    shown = f"{value:.2f}{suffix}" if unit == "x" else f"{value:+.2f}{suffix}"
    if goal is None:
        return f"- {entry['name']}: **{shown}**"
    return (f"- {entry['name']}: **{shown}** (goal <= {goal:g}{suffix}: "
            f"{'met' if value <= goal else 'not met'})")


def machine_line(result: dict) -> str:
    machine = result["machine"]
    facts = [f"{machine['cpus']} CPUs ({machine['cpu']})", f"Linux {machine['kernel']}",
             f"Python {machine['python']}"]
    if machine.get("engine"):
        facts.append(machine["engine"])
    settings = ", ".join(f"{key} {value}" for key, value in result["settings"].items()
                         if value not in (None, False))
    return (f"Measured {machine['date']} on {', '.join(facts)}"
            + (f"; settings: {settings}." if settings else "."))


def table_lines(table: dict) -> list[str]:
    columns = list(table["units"].items())
    lines = [f"**{table['title']}**", "",
             "| | " + " | ".join(f"{name} ({unit})" for name, unit in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for row in table["rows"]:
        values = [cell(row["values"].get(name)) for name, _ in columns]
        name = row["name"] if row["label"] == row["name"] else f"{row['name']}: {row['label']}"
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return [*lines, ""]


def section(name: str, result: dict | None, chart: bool) -> list[str]:
    heading, command = BENCHES.get(name, (name, f"bench/{name}_bench.py"))
    script = command.split()[0]
    lines = [f"## {heading}", "", f"[`{command}`](../{script})"
             + (f": {result['title']}" if result else ""), ""]
    if result is None:
        how = f".venv/bin/python {command}" if name in BY_HAND else "make bench"
        return [*lines, f"Not measured yet: run `{how}`.", ""]
    lines += [machine_line(result), ""]
    if chart:
        lines += [f"![{heading}]({CHART})", ""]
    for table in result["tables"]:
        lines += table_lines(table)
    lines += [ratio_line(entry) for entry in result["ratios"]]
    lines += [f"- {key}: {value}" for key, value in result["checks"].items()]
    return [*lines, ""] if result["ratios"] or result["checks"] else lines


def builder_chart(result: dict) -> bytes:
    """Grouped bars of the builder bench's first table: times (cold, warm; min-max as error
    bars) and pushed sizes (cold, warm), one group per contender."""
    table = result["tables"][0]
    names = [row["name"] for row in table["rows"]]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    panels = ((axes[0], ("cold", "warm"), "seconds (build + push)"),
              (axes[1], ("pushed", "warm pushed"), "MB pushed"))
    width = 0.38
    for axis, columns, label in panels:
        for offset, column in enumerate(columns):
            values = [row["values"].get(column) for row in table["rows"]]
            heights = [median(v) if v is not None else 0 for v in values]
            spreads = [(h - min(v), max(v) - h) if isinstance(v, list) else (0, 0)
                       for h, v in zip(heights, values, strict=True)]
            errors = [[low for low, _ in spreads], [high for _, high in spreads]]
            positions = [i + (offset - 0.5) * width for i in range(len(names))]
            bars = axis.bar(positions, heights, width, label=column, capsize=3,
                            yerr=errors if any(map(any, spreads)) else None)
            axis.bar_label(bars, labels=[number(h) for h in heights], fontsize=7, padding=2)
        axis.set_xticks(range(len(names)), names, fontsize=8)
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
        axis.spines[["top", "right"]].set_visible(False)
    engine = result["machine"].get("engine") or ""
    figure.suptitle(f"examples/sklearn-logreg: the direct builder against the Dockerfile "
                    f"contenders ({result['machine']['date']}, {result['machine']['cpus']} "
                    f"CPUs{', ' + engine if engine else ''})", fontsize=10)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    plt.close(figure)
    return out.getvalue()


RESULT_KEYS = {"bench", "title", "machine", "settings", "tables", "ratios", "checks"}
MACHINE_KEYS = {"date", "cpus", "cpu", "kernel", "python", "engine"}
TABLE_KEYS, ROW_KEYS = {"title", "units", "rows"}, {"name", "label", "values"}
RATIO_KEYS = {"name", "value", "unit", "goal"}


def shaped(result: Any) -> bool:
    """Whether ``result`` has what bench/result.py writes."""
    def has(value: Any, keys: set[str]) -> bool:
        return isinstance(value, dict) and value.keys() >= keys

    def each(values: Any, keys: set[str]) -> bool:
        return isinstance(values, list) and all(has(value, keys) for value in values)

    return (has(result, RESULT_KEYS) and has(result["machine"], MACHINE_KEYS)
            and each(result["tables"], TABLE_KEYS) and each(result["ratios"], RATIO_KEYS)
            and all(each(table["rows"], ROW_KEYS) for table in result["tables"]))


def load(results: Path) -> dict[str, dict]:
    """Every results file by bench name; BadResult names a file a bench did not write."""
    found = {}
    for path in sorted(results.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise BadResult(f"{path}: unreadable ({error})") from error
        if not shaped(result):
            raise BadResult(f"{path}: not what a bench writes (see bench/result.py)")
        found[path.stem] = result
    return found


def report(results: Path, docs: Path) -> None:
    """Write docs/performance.md (and the builder chart when the builder bench ran)."""
    found = load(results)
    docs.mkdir(parents=True, exist_ok=True)
    chart = docs / CHART
    if "builder" in found:
        chart.write_bytes(builder_chart(found["builder"]))
    else:
        chart.unlink(missing_ok=True)
    lines = [HEADER]
    for name in [*BENCHES, *sorted(set(found) - set(BENCHES))]:
        lines += section(name, found.get(name), chart=name == "builder")
    (docs / "performance.md").write_text("\n".join(lines).rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    try:
        report(args.results, args.docs)
    except BadResult as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.docs / 'performance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
