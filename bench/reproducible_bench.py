"""The cost of reproducible mode, per backend: cold build+push of the example with
`--reproducible` (the default) and with `--no-reproducible`, side by side in one run.

One fresh Docker engine and registry (builder_bench.fresh_stack), the local base pushed;
Buildah with its own vfs storage. Every build is cold: the Docker build cache is emptied
before each one (Buildah builds with --layers=false, so it has none). Rounds interleave the
two modes with a rotating order; medians (min-max) and the ratio are printed, and whether
the reproducible builds of a backend all gave one digest.
Usage: python bench/reproducible_bench.py [--rounds N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builder_bench import EXAMPLE, fresh_stack, run, spread
from devstack import buildah_env
from result import buildah_version, docker_engine, ratio, table, write_result

from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.diff import diff_images

MODES = ("--reproducible", "--no-reproducible")


def what_differs(client: RegistryClient, found: dict[str, str]) -> list[str]:
    """The file-level report between the first two digests (mounted into one repository)."""
    (first, first_repo), (second, second_repo) = list(found.items())[:2]
    _, second_manifest = client.manifest(second_repo, second)
    for blob in [*second_manifest["layers"], second_manifest["config"]]:
        client.push_blob(first_repo, blob["digest"], None, mount_from=second_repo)
    _, first_manifest = client.manifest(first_repo, first)
    return diff_images(client, first_repo, first_manifest, second_manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    times: dict[tuple[str, str], list[float]] = {}
    digests: dict[str, dict[str, str]] = {"docker": {}, "buildah": {}}  # digest -> repo
    with fresh_stack() as (root, engine, registry, base, _):
        client = RegistryClient(registry.address)
        environments = {"docker": engine.env(), "buildah": buildah_env(root)}
        for round_ in range(args.rounds):
            modes = MODES[round_ % 2:] + MODES[:round_ % 2]
            for backend, backend_env in environments.items():
                for mode in modes:
                    if backend == "docker":
                        engine.cli("builder", "prune", "-af")
                    repository = f"bench/{backend}{mode.replace('--', '-')}-{round_}"
                    codeset = Path(shutil.copytree(EXAMPLE, root / repository.replace("/", "-")))
                    env = {**backend_env, "FUSEML_REGISTRY": registry.address,
                           "FUSEML_BASE_IMAGE": base, "FUSEML_BUILDER": backend,
                           "FUSEML_REPOSITORY": repository}
                    start = time.perf_counter()
                    reference = run([sys.executable, "-m", "mlflow_steps", "build",
                                     str(codeset), mode], env).strip()
                    times.setdefault((backend, mode), []).append(time.perf_counter() - start)
                    if mode == "--reproducible":
                        digest = client.manifest_digest(repository, reference.rsplit(":", 1)[1])
                        digests[backend].setdefault(str(digest), repository)
        differing = {backend: what_differs(client, found)
                     for backend, found in digests.items() if len(found) > 1}
        engine_facts = f"{docker_engine(engine.cli)}; {buildah_version()}"
    print(f"{'':<9}{'reproducible':>26}{'not reproducible':>26}{'ratio':>8}  digests")
    cost = {}  # reproducible / not, per backend
    for backend in environments:
        on, off = times[(backend, MODES[0])], times[(backend, MODES[1])]
        cost[backend] = statistics.median(on) / statistics.median(off)
        same = "one" if len(digests[backend]) == 1 else f"{len(digests[backend])} different"
        print(f"{backend:<9}{spread(on):>26}{spread(off):>26}{cost[backend]:>7.2f}x  {same}")
    for backend, found in differing.items():
        print(f"{backend}: what differs between its reproducible builds:")
        print("\n".join(f"  {line}" for line in found))
    write_result("reproducible", __doc__.splitlines()[0], vars(args), [table(
        "Cold build+push of the example, every build cold",
        {"reproducible": "s", "not reproducible": "s"},
        {backend: {"reproducible": times[(backend, MODES[0])],
                   "not reproducible": times[(backend, MODES[1])]}
         for backend in environments})],
        [ratio(f"{backend}: reproducible / not", cost[backend]) for backend in environments],
        engine=engine_facts,
        checks={f"{backend}: digests of the reproducible builds":
                "one" if len(found) == 1 else f"{len(found)} different"
                for backend, found in digests.items()})


if __name__ == "__main__":
    main()
