"""Conda packages (rattler, no conda) vs the same environment the pip way: build+push, size.

One fresh Docker engine, registry and local base; the tests' local conda channel (python,
pip, six, markupsafe as conda packages). Both contenders install the same packages, six,
markupsafe and examples/sklearn-logreg's pip list, with `mlflow-steps build --builder docker`:
  * conda: conda.yaml with python/pip/six/markupsafe from the channel, the rest in `pip:`;
  * pip:   requirements.txt with all of them from PyPI (python from the base).
Cold: the engine's build cache is emptied before each build; rattler's package cache is
kept (as a builder's is), the uv cache mount goes with the build cache. Rounds alternate
the order; medians (min-max) and the ratio conda/pip are printed.
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
    if kind == "conda":
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
    kinds = ["conda", "pip"]
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    size: dict[str, int] = {}
    with fresh_stack() as (root, engine, registry, base, base_layers):
        for round_ in range(args.rounds):
            for kind in kinds if round_ % 2 == 0 else reversed(kinds):
                engine.cli("builder", "prune", "-af")
                env = {**engine.env(), "FUSEML_REGISTRY": registry.address,
                       "FUSEML_BASE_IMAGE": base, "FUSEML_BUILDER": "docker",
                       "FUSEML_REPOSITORY": f"bench/{kind}-{round_}",
                       "CONDA_CHANNEL_ALIAS": channel.alias_url}
                start = time.perf_counter()
                reference = run([sys.executable, "-m", "mlflow_steps", "build",
                                 str(codeset(root, kind, round_)), "--force"], env).strip()
                times[kind].append(time.perf_counter() - start)
                size[kind] = pushed_bytes(registry, reference, base_layers)
        engine_facts = docker_engine(engine.cli)
    print(f"{'':<7}{'cold build+push':>26}{'pushed':>12}")
    for kind in kinds:
        print(f"{kind:<7}{spread(times[kind]):>26}{size[kind] / 1e6:>9.1f} MB")
    time_ratio = statistics.median(times["conda"]) / statistics.median(times["pip"])
    print(f"conda / pip: time {time_ratio:.2f}x, pushed {size['conda'] / size['pip']:.2f}x "
          f"({os.uname().machine}, the channel's python is Debian's, {args.rounds} rounds)")
    write_result("conda", __doc__.splitlines()[0], vars(args), [table(
        "Cold build+push, the same packages as conda packages (rattler) and from PyPI",
        {"cold": "s", "pushed": "MB"},
        {kind: {"cold": times[kind], "pushed": size[kind] / 1e6} for kind in kinds})],
        [ratio("conda / pip, cold", time_ratio),
         ratio("conda / pip, pushed", size["conda"] / size["pip"])], engine=engine_facts)


if __name__ == "__main__":
    main()
