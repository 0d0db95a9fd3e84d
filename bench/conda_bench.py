"""Conda packages (rattler, no conda) vs the same environment the pip way, and the direct builder
against Docker for the conda one: build+push, size.

One fresh Docker engine, registry and local base; the tests' local conda channel (python,
pip, six, markupsafe as conda packages). Every contender installs the same packages, six,
markupsafe and examples/sklearn-logreg's pip list, with `mlflow-steps build`:
  * conda (docker): conda.yaml with python/pip/six/markupsafe from the channel, the rest in
    `pip:`, `--builder docker`;
  * conda (direct): the same conda.yaml, `--builder direct` (no engine);
  * pip (docker):   requirements.txt with all of them from PyPI (python from the base).
Cold: the engine's build cache is emptied before each build, the direct builder gets an
empty layer cache; rattler's package cache is kept (as a builder's is), and uv's (the
Dockerfile's uv cache mount goes with the build cache, as it does on a fresh builder).
Rounds rotate the order; medians (min-max) and the ratios are printed.
Usage: python bench/conda_bench.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "tests"), str(REPO / "bench")]

from builder_bench import fresh_stack, pushed_bytes, run, spread  # noqa: E402
from result import docker_engine, ratio, table, write_result  # noqa: E402
from support.conda_channel import build_channel  # noqa: E402

EXAMPLE = REPO / "examples" / "sklearn-logreg"
CONDA_PACKAGES = ["six", "markupsafe"]


def codeset(root: Path, kind: str, round_: int) -> Path:
    target = root / f"{kind}-{round_}"
    shutil.copytree(EXAMPLE, target)
    example = yaml.safe_load((target / "conda.yaml").read_text())
    pip = next(d["pip"] for d in example["dependencies"] if isinstance(d, dict))
    (target / "conda.yaml").unlink()
    if kind.startswith("conda"):
        (target / "conda.yaml").write_text(yaml.safe_dump({
            "channels": ["conda-forge"],
            "dependencies": ["python=3.11", "pip", *CONDA_PACKAGES, {"pip": pip}]}))
    else:
        (target / "requirements.txt").write_text("\n".join([*CONDA_PACKAGES, *pip]) + "\n")
        project = (target / "MLproject").read_text().replace("conda_env: conda.yaml\n", "")
        (target / "MLproject").write_text(project)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    channel = build_channel()
    kinds = ["conda (docker)", "conda (direct)", "pip (docker)"]
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    size: dict[str, int] = {}
    with fresh_stack() as (root, engine, registry, base, base_layers):
        for round_ in range(args.rounds):
            for kind in kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]:
                engine.cli("builder", "prune", "-af")
                name, builder = kind.split()[0], kind.split()[1].strip("()")
                env = {**engine.env(), "FUSEML_REGISTRY": registry.address,
                       "FUSEML_BASE_IMAGE": base, "FUSEML_BUILDER": builder,
                       "FUSEML_REPOSITORY": f"bench/{name}-{builder}-{round_}",
                       "MLFLOW_STEPS_CACHE": str(root / f"cache-{builder}-{round_}"),
                       "CONDA_CHANNEL_ALIAS": channel.alias_url}
                start = time.perf_counter()
                reference = run([sys.executable, "-m", "mlflow_steps", "build",
                                 str(codeset(root, f"{name}-{builder}", round_)), "--force"],
                                env).strip()
                times[kind].append(time.perf_counter() - start)
                size[kind] = pushed_bytes(registry, reference, base_layers)
        engine_facts = docker_engine(engine.cli)
    print(f"{'':<16}{'cold build+push':>26}{'pushed':>12}")
    for kind in kinds:
        print(f"{kind:<16}{spread(times[kind]):>26}{size[kind] / 1e6:>9.1f} MB")
    median = {kind: statistics.median(times[kind]) for kind in kinds}
    time_ratio = median["conda (docker)"] / median["pip (docker)"]
    direct_ratio = median["conda (direct)"] / median["conda (docker)"]
    pushed_ratio = size["conda (docker)"] / size["pip (docker)"]
    print(f"conda / pip (docker): time {time_ratio:.2f}x, pushed {pushed_ratio:.2f}x; conda, "
          f"direct / docker: time {direct_ratio:.2f}x ({os.uname().machine}, the channel's "
          f"python is Debian's, {args.rounds} rounds)")
    write_result("conda", __doc__.splitlines()[0], vars(args), [table(
        "Cold build+push, the same packages as conda packages (rattler) and from PyPI",
        {"cold": "s", "pushed": "MB"},
        {kind: {"cold": times[kind], "pushed": size[kind] / 1e6} for kind in kinds})],
        [ratio("conda / pip (docker), cold", time_ratio),
         ratio("conda / pip (docker), pushed", pushed_ratio),
         ratio("conda: direct / docker, cold", direct_ratio)], engine=engine_facts)


if __name__ == "__main__":
    main()
