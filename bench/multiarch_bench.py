"""Two platforms from one amd64 machine: linux/amd64 + linux/arm64 build+push, against one.

One fresh Docker engine and registry; the local python base for both platforms (the amd64
one, and an arm64 one from Debian's arm64 packages) under one tag as an OCI index; every
contender builds examples/sklearn-logreg's environment on it and pushes to a repository of
its own:
  * direct (amd64):       `mlflow-steps build --builder direct` (one image);
  * direct (amd64+arm64): the same with `--platform linux/amd64,linux/arm64` (an index);
  * docker (amd64):       a careful Dockerfile (one venv, pip --no-cache-dir), built+pushed;
  * docker (amd64+arm64): the same Dockerfile built and pushed for each platform, the arm64
                          one under QEMU (binfmt_misc with Debian's qemu-aarch64 entry,
                          registered for the bench and removed after), as `docker buildx
                          build --platform` would (buildx itself is not installed here).
Every round starts cold for the build: empty mlflow-steps layer cache, engine build cache
pruned; the package caches (uv's, pip's wheels) are warmed once before the rounds, so the
network does not vary between contenders. Rounds are interleaved with a rotating order;
medians (and min-max) are printed.
Usage: python bench/multiarch_bench.py [--rounds N] [--no-qemu]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from builder_bench import fresh_stack, run
from devstack import docker_cli
from multiarch_base import push_multiarch_base
from result import docker_engine, ratio, table, write_result

from mlflow_steps.build.image_plan import requirements_text
from mlflow_steps.env.spec import BuildOptions, resolve_env

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sklearn-logreg"
BOTH = "linux/amd64,linux/arm64"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_ENTRY = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # Debian's qemu-user-static
LABELS = {
    "direct (amd64)": "`mlflow-steps build --builder direct` (one image)",
    "direct (amd64+arm64)": "the same, `--platform linux/amd64,linux/arm64` (an OCI index)",
    "docker (amd64)": "careful Dockerfile, `docker build` + push",
    "docker (amd64+arm64)": "the same for each platform, arm64 under QEMU",
}
# PyPI is reached through this machine's CA bundle (a TLS proxy's CA may be in it): a secret
DOCKERFILE = """\
FROM {base}
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=ca,target=/run/secrets/ca.pem python3 -m venv /env \\
 && PIP_CERT=/run/secrets/ca.pem /env/bin/pip install --no-cache-dir -r /tmp/requirements.txt
ENV PATH=/env/bin:$PATH
"""
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@contextlib.contextmanager
def qemu_binfmt() -> Iterator[str | None]:
    """QEMU for arm64 programs registered with binfmt_misc for the block (None, or why not:
    it is then not registered); what was mounted or registered here is removed after."""
    mounted = False
    if not (BINFMT / "register").exists():
        mounted = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                                 capture_output=True).returncode == 0
        if not mounted:
            yield "binfmt_misc cannot be mounted here"
            return
    entry = BINFMT / "qemu-aarch64"
    registered = False
    try:
        if not entry.exists():
            if not QEMU_ENTRY.exists():
                yield f"{QEMU_ENTRY} is missing (apt-get install qemu-user-static)"
                return
            (BINFMT / "register").write_text(QEMU_ENTRY.read_text().strip())
            registered = True
        yield None
    finally:
        if registered:
            entry.write_text("-1")
        if mounted:
            subprocess.run(["umount", str(BINFMT)], check=False)


class Contender:
    """Builds and pushes one way, for one platform set."""

    def __init__(self, name: str, root: Path, registry, engine, base: str) -> None:
        self.name, self.registry, self.engine, self.base = name, registry, engine, base
        self.root = root / "-".join(name.replace("(", "").replace(")", "").replace(
            "+", " ").split())
        self.root.mkdir()
        self.direct = name.startswith("direct")
        self.platforms = BOTH if "arm64" in name else "linux/amd64"

    def build_push(self, round_: int, env: dict[str, str]) -> float:
        repository = f"bench/{self.root.name}-{round_}"
        cache = self.root / f"cache-{round_}"
        if self.direct:
            argv = [sys.executable, "-m", "mlflow_steps", "build", str(EXAMPLE), "--builder",
                    "direct", "--registry", self.registry.address, "--base-image", self.base,
                    "--repository", repository, "--platform", self.platforms, "--quiet"]
            started = time.perf_counter()
            run(argv, {**env, "MLFLOW_STEPS_CACHE": str(cache)})
            elapsed = time.perf_counter() - started
            shutil.rmtree(cache, ignore_errors=True)
            return elapsed
        context = self.root / f"context-{round_}"
        context.mkdir()
        (context / "Dockerfile").write_text(DOCKERFILE.format(base=self.base))
        _, spec = resolve_env(EXAMPLE, BuildOptions(base_image=self.base))
        (context / "requirements.txt").write_text(requirements_text(spec))
        self.engine.cli("builder", "prune", "-af")
        docker_env = {**self.engine.env(), "DOCKER_BUILDKIT": "1"}
        started = time.perf_counter()
        for platform in self.platforms.split(","):
            tag = f"{self.registry.address}/{repository}:{platform.split('/')[1]}"
            run([docker_cli(), "build", "--network", "host", "--platform", platform, "-t", tag,
                 "--secret", f"id=ca,src={CA_BUNDLE}", str(context)], docker_env)
            run([docker_cli(), "push", tag], docker_env)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-qemu", action="store_true",
                        help="leave the Docker contender for two platforms out")
    args = parser.parse_args()
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    with tempfile.TemporaryDirectory(prefix="mls-multiarch-", dir="/tmp") as tmp, \
            fresh_stack() as (_, engine, registry, amd64_base, _), \
            qemu_binfmt() if not args.no_qemu else contextlib.nullcontext(
                "--no-qemu was given") as no_qemu:
        root = Path(tmp)
        base = push_multiarch_base(registry.address, amd64_base, root / "base")
        names = ["direct (amd64)", "direct (amd64+arm64)", "docker (amd64)"]
        if no_qemu is None:
            names.append("docker (amd64+arm64)")
        contenders = [Contender(name, root, registry, engine, base) for name in names]
        for contender in contenders:  # warm the package caches, not timed
            contender.build_push(0, env)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(1, args.rounds + 1):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                contender = next(c for c in contenders if c.name == name)
                samples[name].append(contender.build_push(round_, env))
                print(f"round {round_}: {name} {samples[name][-1]:.1f} s", flush=True)
        engine_facts = docker_engine(engine.cli)
    report(samples, no_qemu, engine_facts, args)


def report(samples: dict[str, list[float]], no_qemu: str | None, engine_facts: str,
           args: argparse.Namespace) -> None:
    median = statistics.median
    two, one = median(samples["direct (amd64+arm64)"]), median(samples["direct (amd64)"])
    ratios = [ratio("direct: two platforms / one", two / one, goal=1.6),
              ratio("direct two platforms / docker one platform",
                    two / median(samples["docker (amd64)"]))]
    checks = {}
    if no_qemu is None:
        docker_two = median(samples["docker (amd64+arm64)"])
        ratios += [ratio("direct / docker under QEMU, two platforms", two / docker_two),
                   ratio("docker: two platforms (QEMU) / one",
                         docker_two / median(samples["docker (amd64)"]))]
    else:
        checks["docker under QEMU"] = f"not measured: {no_qemu}"
    for name, values in samples.items():
        print(f"{name:<24} {median(values):7.1f} s ({min(values):.1f}-{max(values):.1f})")
    for item in ratios:
        goal = "" if item["goal"] is None else f" (goal <= {item['goal']})"
        print(f"{item['name']}: {item['value']:.2f}{item['unit']}{goal}")
    write_result("multiarch", __doc__.splitlines()[0], {"rounds": args.rounds}, [
        table("Build and push of examples/sklearn-logreg's environment",
              {"build+push": "s"}, {name: {"build+push": values}
                                    for name, values in samples.items()}, LABELS)],
              ratios, engine=engine_facts, checks=checks)


if __name__ == "__main__":
    main()
