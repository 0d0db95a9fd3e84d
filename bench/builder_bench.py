"""Builder step vs hand-written Dockerfiles: cold and warm build+push, pushed bytes, skip.

One fresh Docker engine and registry; every contender builds examples/sklearn-logreg's
requirements on the same local base, with the same forwarded pip configuration (BuildKit
secrets), and pushes to the same registry (a repository of its own):
  * direct:  `mlflow-steps build --builder direct` (no engine; the default `auto` choice);
  * direct-zstd: the same with `--compression zstd` (OCI zstd layers);
  * ours:    `mlflow-steps build --builder docker` (the Dockerfile path);
  * careful: a hand-written Dockerfile (one venv, pip --no-cache-dir, requirements only);
  * naive:   the original FuseML style (apt-get install git, pip upgrade, pip cache kept,
             whole codeset copied).
Cold: the engine's build cache is emptied before each build (the base stays pulled); direct
starts with an empty package cache and an empty mlflow-steps cache.
Warm: right after, the same contender rebuilds with one more requirement line (`tabulate`,
not in the environment before).
Rounds are interleaved with a rotating order; medians (and min-max) are printed.
Skip: `mlflow-steps build` once the tag exists, median of 9 rounds, in the step's own
environment (a venv with `.[builder]`, what the builder image installs), in the dev venv and
next to the floor (interpreter + one HEAD), interleaved; then the builder image run end to
end (`docker run`) on its own.
Usage: python bench/builder_bench.py [--rounds N] [--skip-only]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from devstack import CACHE, DockerEngine, Registry, docker_cli, push_base_image  # noqa: E402
from result import docker_engine, ratio, table, write_result  # noqa: E402

from images import build as build_step_image  # noqa: E402
from images import pip_secrets  # noqa: E402
from mlflow_steps.build.image_plan import requirements_text  # noqa: E402
from mlflow_steps.env.spec import BuildOptions, resolve_env  # noqa: E402

EXAMPLE = REPO / "examples" / "sklearn-logreg"
SKIP_ROUNDS = 9
IMAGE_SKIP = "(builder image, docker run)"
FLOOR_SKIP = "floor (python + one HEAD)"
LABELS = {
    "direct": "`mlflow-steps build` (auto: `--builder direct`, no engine)",
    "direct-zstd": "the same with `--compression zstd`",
    "ours": "`mlflow-steps build --builder docker` (Dockerfile path)",
    "careful": "careful Dockerfile (one venv, pip `--no-cache-dir`)",
    "naive": "FuseML-style Dockerfile (git, pip upgrade, codeset copied)",
}
CAREFUL_DOCKERFILE = """\
FROM {base}
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip-config,target=/etc/pip.conf \\
    --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca.pem \\
    python3 -m venv /env && /env/bin/pip install --no-cache-dir -r /tmp/requirements.txt
ENV PATH=/env/bin:$PATH
"""
NAIVE_DOCKERFILE = """\
FROM {base}
RUN apt-get update && apt-get install -y git
COPY . /project
RUN --mount=type=secret,id=pip-config,target=/etc/pip.conf \\
    --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca.pem \\
    python3 -m venv /env && /env/bin/pip install --upgrade pip \\
 && /env/bin/pip install -r /project/requirements.txt
WORKDIR /project
"""
FLOOR = """\
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD", headers={"Accept": (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json")}), timeout=10)
"""


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(argv[:4])}...\n{result.stderr[-3000:]}")
    return result.stdout


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    run(argv, env, cwd)
    return time.perf_counter() - start


def step_python() -> Path:
    """A venv with what the builder image installs (`.[builder]`, not editable: an editable
    install's import hook costs time the image does not have), cached per source tree."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    for path in sorted((REPO / "src").rglob("*")):
        if path.is_file() and "egg-info" not in str(path) and "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(REPO)}\0".encode() + path.read_bytes())
    venv = CACHE / f"bench-step-venv-{digest.hexdigest()[:12]}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"{REPO}[builder]"],
                       check=True, capture_output=True)
        (venv / ".complete").touch()
    return python


def pushed_bytes(registry: Registry, reference: str, base_layers: set[str]) -> int:
    """Compressed bytes of the image's layers that are not the base's."""
    repository, tag = reference.split("/", 1)[1].rsplit(":", 1)
    import requests

    manifest = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{tag}", timeout=30,
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json,"
                           "application/vnd.oci.image.manifest.v1+json"}).json()
    return sum(layer["size"] for layer in manifest["layers"]
               if layer["digest"] not in base_layers)


def layer_digests(registry: Registry, reference: str) -> set[str]:
    repository, tag = reference.split("/", 1)[1].rsplit(":", 1)
    import requests

    manifest = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{tag}", timeout=30,
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json,"
                           "application/vnd.oci.image.manifest.v1+json"}).json()
    return {layer["digest"] for layer in manifest["layers"]}


@contextlib.contextmanager
def fresh_stack() -> Iterator[tuple[Path, DockerEngine, Registry, str, set[str]]]:
    """A new engine and registry in a temporary root, the local base pushed: (root, engine,
    registry, base reference, the base's layer digests); all stopped and removed after."""
    with tempfile.TemporaryDirectory(prefix="mls-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        engine = DockerEngine(root / "docker").start()
        registry = Registry(root / "registry").start()
        try:
            base = push_base_image(engine, registry)
            yield root, engine, registry, base, layer_digests(registry, base)
        finally:
            registry.stop()
            engine.stop()


class Contender:
    """Builds and pushes one way; ``extra`` adds a requirement line (the warm rebuild)."""

    def __init__(self, name: str, engine: DockerEngine, registry: Registry, base: str,
                 root: Path) -> None:
        self.name, self.engine, self.registry, self.base = name, engine, registry, base
        self.root = root / name
        self.root.mkdir()
        self.reference = ""

    def build_push(self, round_: int, extra: str = "") -> float:
        codeset = self.root / f"codeset-{round_}{'-warm' if extra else ''}"
        shutil.copytree(EXAMPLE, codeset)
        if extra:
            conda = codeset / "conda.yaml"
            conda.write_text(conda.read_text().replace("      - boto3\n",
                                                       f"      - boto3\n      - {extra}\n"))
        if self.name.startswith("direct"):  # caches of its own per round, kept for warm
            env = {**os.environ, "FUSEML_REGISTRY": self.registry.address,
                   "FUSEML_BASE_IMAGE": self.base, "FUSEML_BUILDER": "direct",
                   "FUSEML_COMPRESSION": "zstd" if self.name == "direct-zstd" else "gzip",
                   "FUSEML_REPOSITORY": f"bench/{self.name}-{round_}",
                   "MLFLOW_STEPS_CACHE": str(self.root / f"cache-{round_}"),
                   "UV_CACHE_DIR": str(self.root / f"uv-cache-{round_}")}
            start = time.perf_counter()
            self.reference = run([sys.executable, "-m", "mlflow_steps", "build",
                                  str(codeset), "--force"], env).strip()
            return time.perf_counter() - start
        if self.name == "ours":
            env = {**self.engine.env(), "FUSEML_REGISTRY": self.registry.address,
                   "FUSEML_BASE_IMAGE": self.base, "FUSEML_BUILDER": "docker",
                   "FUSEML_REPOSITORY": f"bench/ours-{round_}"}
            start = time.perf_counter()
            self.reference = run([sys.executable, "-m", "mlflow_steps", "build",
                                  str(codeset), "--force"], env).strip()
            return time.perf_counter() - start
        _, spec = resolve_env(codeset, BuildOptions(base_image=self.base))
        (codeset / "requirements.txt").write_text(requirements_text(spec))
        template = CAREFUL_DOCKERFILE if self.name == "careful" else NAIVE_DOCKERFILE
        (codeset / "Dockerfile").write_text(template.format(base=self.base))
        secrets_dir = codeset.parent / f"secrets-{codeset.name}"
        secrets_dir.mkdir(mode=0o700)
        self.reference = f"{self.registry.address}/bench/{self.name}-{round_}:latest"
        env = {**self.engine.env(), "DOCKER_BUILDKIT": "1"}
        start = time.perf_counter()
        run([docker_cli(), "build", "-t", self.reference, *pip_secrets(secrets_dir),
             str(codeset)], env)
        run([docker_cli(), "push", self.reference], env)
        return time.perf_counter() - start


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} s ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-only", action="store_true",
                        help="time only the skip decision (a fresh engine and registry)")
    args = parser.parse_args()
    if args.skip_only:
        with fresh_stack() as (root, engine, registry, base, _):
            skip = skip_times(engine, registry, base, root)
            print_skip(skip)
            write_result("builder-skip", __doc__.splitlines()[0], vars(args),
                         [skip_table(skip)], [], engine=docker_engine(engine.cli))
        return
    names = ["direct", "direct-zstd", "ours", "careful", "naive"]
    cold: dict[str, list[float]] = {name: [] for name in names}
    warm: dict[str, list[float]] = {name: [] for name in names}
    size: dict[str, int] = {}
    warm_new: dict[str, int] = {}  # bytes of the warm image's layers the cold one lacks
    with fresh_stack() as (root, engine, registry, base, base_layers):
        contenders = {name: Contender(name, engine, registry, base, root) for name in names}
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                engine.cli("builder", "prune", "-af")
                cold[name].append(contenders[name].build_push(round_))
                size[name] = pushed_bytes(registry, contenders[name].reference, base_layers)
                cold_layers = layer_digests(registry, contenders[name].reference)
                warm[name].append(contenders[name].build_push(round_, extra="tabulate"))
                warm_new[name] = pushed_bytes(registry, contenders[name].reference,
                                              base_layers | cold_layers)
        skip = skip_times(engine, registry, base, root)
        engine_facts = docker_engine(engine.cli)
    careful = statistics.median(cold["careful"])
    careful_warm = statistics.median(warm["careful"])
    mb = 1e6
    print(f"{'':<12}{'cold build+push':>26}{'warm (+1 line)':>26}{'pushed':>10}"
          f"{'warm pushed':>14}")
    for name in names:
        print(f"{name:<12}{spread(cold[name]):>26}{spread(warm[name]):>26}"
              f"{size[name] / mb:>7.1f} MB{warm_new[name] / mb:>11.1f} MB")
    print(f"ours / careful: cold {statistics.median(cold['ours']) / careful:.2f}x "
          f"(goal <= 0.5), warm {statistics.median(warm['ours']) / careful_warm:.2f}x vs "
          f"careful warm, {statistics.median(warm['ours']) / careful:.2f}x vs careful cold "
          f"(goal <= 0.25), pushed {size['ours'] / size['careful']:.2f}x (goal <= 0.8)")
    direct, direct_warm = statistics.median(cold["direct"]), statistics.median(warm["direct"])
    print(f"direct / careful: cold {direct / careful:.2f}x (goal <= 0.4), warm "
          f"{direct_warm / careful:.2f}x vs careful cold (goal <= 0.25), "
          f"{direct_warm / careful_warm:.2f}x vs careful warm, pushed "
          f"{size['direct'] / size['careful']:.2f}x (goal <= 0.8); direct / ours (docker): "
          f"cold {direct / statistics.median(cold['ours']):.2f}x")
    zstd = statistics.median(cold["direct-zstd"])
    print(f"direct-zstd / careful: cold {zstd / careful:.2f}x, warm "
          f"{statistics.median(warm['direct-zstd']) / careful:.2f}x vs careful cold, pushed "
          f"{size['direct-zstd'] / size['careful']:.2f}x")
    naive = statistics.median(cold["naive"])
    print(f"ours / naive:   cold {statistics.median(cold['ours']) / naive:.2f}x, "
          f"pushed {size['ours'] / size['naive']:.2f}x")
    print_skip(skip)
    ours, ours_warm = statistics.median(cold["ours"]), statistics.median(warm["ours"])
    write_result("builder", __doc__.splitlines()[0], vars(args), [
        table("Build and push of examples/sklearn-logreg",
              {"cold": "s", "warm": "s", "pushed": "MB", "warm pushed": "MB"},
              {name: {"cold": cold[name], "warm": warm[name], "pushed": size[name] / mb,
                      "warm pushed": warm_new[name] / mb} for name in names}, LABELS),
        skip_table(skip)], [
        ratio("direct / careful, cold", direct / careful, goal=0.4),
        ratio("direct warm / careful cold", direct_warm / careful, goal=0.25),
        ratio("direct warm / careful warm", direct_warm / careful_warm),
        ratio("direct / careful, pushed", size["direct"] / size["careful"], goal=0.8),
        ratio("direct / ours (docker), cold", direct / ours),
        ratio("direct-zstd / careful, cold", zstd / careful),
        ratio("direct-zstd warm / careful cold",
              statistics.median(warm["direct-zstd"]) / careful),
        ratio("direct-zstd / careful, pushed", size["direct-zstd"] / size["careful"]),
        ratio("ours / careful, cold", ours / careful, goal=0.5),
        ratio("ours warm / careful warm", ours_warm / careful_warm),
        ratio("ours warm / careful cold", ours_warm / careful, goal=0.25),
        ratio("ours / careful, pushed", size["ours"] / size["careful"], goal=0.8),
        ratio("ours / naive, cold", ours / naive),
        ratio("ours / naive, pushed", size["ours"] / size["naive"]),
        ], engine=engine_facts)


def skip_table(skip: dict[str, float]) -> dict:
    return table(f"Skip decision once the tag exists (median of {SKIP_ROUNDS} rounds)",
                 {"skip": "s", "vs floor": "x"},
                 {label: {"skip": seconds,
                          "vs floor": seconds / skip[FLOOR_SKIP]}
                  for label, seconds in skip.items()})


def print_skip(skip: dict[str, float]) -> None:
    """Each median, and as a multiple of the floor measured beside it (this VM's speed
    swings from day to day; the multiple moves less)."""
    for label, seconds in skip.items():
        multiple = "" if label == FLOOR_SKIP else f"  ({seconds / skip[FLOOR_SKIP]:.1f}x floor)"
        print(f"skip {label:<34}{seconds:6.3f} s{multiple}")


def skip_times(engine: DockerEngine, registry: Registry, base: str, root: Path
               ) -> dict[str, float]:
    """The skip decision, median of SKIP_ROUNDS interleaved rounds, once the example's tag
    exists."""
    env = {**engine.env(), "FUSEML_REGISTRY": registry.address, "FUSEML_BASE_IMAGE": base,
           "FUSEML_REPOSITORY": "bench/skip", "FUSEML_BUILDER": "docker"}
    run([sys.executable, "-m", "mlflow_steps", "build", str(EXAMPLE)], env)
    tag = run([sys.executable, "-m", "mlflow_steps", "hash", str(EXAMPLE), "--base-image",
               base], env).strip()
    builder = build_step_image(engine, registry, "builder", "bench")
    docker_run = [docker_cli(), "run", "--rm", "--network", "host",
                  "-v", f"{EXAMPLE}:/project:ro", "-e", f"FUSEML_REGISTRY={registry.address}",
                  "-e", f"FUSEML_BASE_IMAGE={base}", "-e", "FUSEML_REPOSITORY=bench/skip",
                  "-e", "PIP_CONFIG_FILE=/dev/null", builder]
    argv = ["-m", "mlflow_steps", "build", str(EXAMPLE)]
    commands = {
        "(step venv, mlflow-skinny)": ([str(step_python()), *argv], env),
        "(dev venv, full MLflow)": ([sys.executable, *argv], env),
        IMAGE_SKIP: (docker_run, engine.env()),
        FLOOR_SKIP: (
            [sys.executable, "-c", FLOOR, f"{registry.url}/v2/bench/skip/manifests/{tag}"],
            env),
    }
    for command, command_env in commands.values():
        timed(command, command_env)  # warm the page cache
    os.sync()  # the builder image's build has just written a lot: let that settle first
    time.sleep(5)
    samples: dict[str, list[float]] = {label: [] for label in commands}
    # Host commands interleaved (a passing disturbance hits each); the builder image's runs
    # after them, on their own: the engine removes each container after the run returns.
    for group in ([label for label in commands if label != IMAGE_SKIP], [IMAGE_SKIP]):
        for _ in range(SKIP_ROUNDS):
            for label in group:
                command, command_env = commands[label]
                samples[label].append(timed(command, command_env))
    return {label: statistics.median(values) for label, values in samples.items()}


if __name__ == "__main__":
    main()
