"""GPU-scale environment: PyTorch with its CUDA wheels, built and pushed three ways.

`torch==2.14.1` from PyPI on Linux brings the CUDA 13 runtime as `nvidia-*` wheels and triton
(~2.9 GB of wheels, ~5 GB installed). The wheels are downloaded once into a cache outside the
repository (--wheels; `pip download` with this machine's pip configuration) and served to
every contender over loopback as a PEP 503 index (nothing else is reachable to them). One
fresh Docker engine and registry; the same local base; each contender in repositories of
its own:
  * direct:  `mlflow-steps build --builder direct` (no engine), gzip layers;
  * direct-zstd: the same with `--compression zstd` (cold only);
  * careful: a careful uv Dockerfile (uv with a BuildKit cache mount, one venv, bytecode);
  * pip:     a plain pip Dockerfile (one venv, pip --no-cache-dir).
Cold: empty build cache (and, for direct, empty mlflow-steps and uv caches). Warm: right
after, the same project with one more requirement line (tabulate). Second project: another
project (torch and tqdm) into another repository of the same registry, caches as the warm
build left them. Bytes pushed: what the registry stored anew (its blob files), so skipped
and mounted blobs count nothing. Peak memory: the direct builder's whole process tree
(RSS summed over its processes, sampled every 0.1 s), and its largest single process.
Not part of `make test` (about an hour on 2 cores).
Usage: python bench/gpu_env_bench.py [--wheels DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import html
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from builder_bench import fresh_stack, run
from devstack import (
    DockerEngine,
    Registry,
    Service,
    docker_cli,
    free_port,
    start,
    wait_until,
)
from result import docker_engine, ratio, table, write_result

from mlflow_steps.build.image_plan import TOOLING_REQUIREMENTS, requirements_text
from mlflow_steps.env.installer import uv_binary
from mlflow_steps.env.spec import BuildOptions, resolve_env

WHEELS = Path(os.environ.get("MLFLOW_STEPS_BENCH_WHEELS",
                             "/var/cache/mlflow-steps-bench/torch-wheels"))
PROJECTS = {"first": ["torch==2.14.1", "numpy"],
            "warm": ["torch==2.14.1", "numpy", "tabulate"],
            "second": ["torch==2.14.1", "tqdm"]}
MLPROJECT = "name: gpu-bench\nentry_points:\n  main:\n    command: python train.py\n"
LABELS = {
    "direct": "`mlflow-steps build --builder direct` (no engine, gzip)",
    "direct-zstd": "the same with `--compression zstd`",
    "careful": "careful uv Dockerfile (BuildKit cache mount, one venv, bytecode)",
    "pip": "plain pip Dockerfile (one venv, pip `--no-cache-dir`)",
}
CAREFUL_DOCKERFILE = """\
FROM {base}
COPY requirements.txt /tmp/requirements.txt
ENV UV_LINK_MODE=copy
RUN --mount=type=cache,target=/root/.cache/uv \\
    --mount=type=bind,source=uv,target=/usr/local/bin/uv \\
    uv venv /env && uv pip install --python /env/bin/python --compile-bytecode \\
    --index-url {index} -r /tmp/requirements.txt
ENV PATH=/env/bin:$PATH
"""
PIP_DOCKERFILE = """\
FROM {base}
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /env \\
 && /env/bin/pip install --no-cache-dir --index-url {index} -r /tmp/requirements.txt
ENV PATH=/env/bin:$PATH
"""
MB = 1e6


def ensure_wheels(wheels: Path, requirements: list[str]) -> None:
    """Every wheel ``requirements`` need in ``wheels``: `pip download` once (the host's pip
    configuration: PyPI), remembered by a marker per requirement set."""
    key = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:16]
    marker = wheels / f".complete-{key}"
    if marker.exists():
        return
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"downloading wheels into {wheels} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                    "-d", str(wheels), *requirements], check=True)
    marker.touch()


def serve_index(wheels: Path, root: Path) -> tuple[str, Service]:
    """``wheels`` as a PEP 503 simple index on a loopback port: (index URL, server)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    by_name: dict[str, list[str]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
        by_name.setdefault(name, []).append(wheel.name)
    (root / "files").symlink_to(wheels)
    for name, files in by_name.items():
        page = root / "simple" / name / "index.html"
        page.parent.mkdir(parents=True)
        page.write_text("<!DOCTYPE html><html><body>\n" + "".join(
            f'<a href="../../files/{html.escape(f)}">{html.escape(f)}</a><br>\n'
            for f in files) + "</body></html>\n")
    port = free_port()
    service = start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                     "--directory", str(root), str(port)], root / "index.log")
    url = f"http://127.0.0.1:{port}/simple/"
    import requests

    wait_until(lambda: requests.get(url + "torch/", timeout=2).ok, 30, "wheel index")
    return url, service


def stored_bytes(registry: Registry) -> int:
    """Bytes of the blobs the registry holds (what pushes stored, skips and mounts not)."""
    blobs = registry.root / "data" / "docker" / "registry" / "v2" / "blobs"
    return sum(path.stat().st_size for path in blobs.rglob("data")) if blobs.exists() else 0


class TreeMemory:
    """Samples the RSS of a process and its descendants every 0.1 s: the peak of their sum
    and of the largest one, in bytes."""

    def __init__(self, pid: int) -> None:
        self.pid, self.total, self.largest = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            parents: dict[int, int] = {}
            rss: dict[int, int] = {}
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    status = (entry / "status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines()
                              if ":" in line)
                parents[int(entry.name)] = int(fields["PPid"])
                rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
            tree = {self.pid}
            grew = True
            while grew:
                children = {pid for pid, parent in parents.items() if parent in tree}
                grew = not children <= tree
                tree |= children
            sizes = [rss.get(pid, 0) for pid in tree]
            self.total = max(self.total, sum(sizes))
            self.largest = max(self.largest, max(sizes))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Contender:
    def __init__(self, name: str, engine: DockerEngine, registry: Registry, base: str,
                 index: str, root: Path) -> None:
        self.name, self.engine, self.registry, self.base = name, engine, registry, base
        self.index, self.root = index, root / name
        self.root.mkdir()
        self.memory = (0, 0)

    def codeset(self, project: str) -> Path:
        codeset = self.root / project
        codeset.mkdir()
        (codeset / "MLproject").write_text(MLPROJECT)
        (codeset / "requirements.txt").write_text("\n".join(PROJECTS[project]) + "\n")
        (codeset / "train.py").write_text("import torch\n")
        return codeset

    def build_push(self, project: str) -> tuple[float, int]:
        """Seconds to build and push ``project``, and the bytes the registry stored."""
        codeset = self.codeset(project)
        repository = f"bench/{self.name}-{'second' if project == 'second' else 'first'}"
        before = stored_bytes(self.registry)
        if self.name.startswith("direct"):
            env = {**os.environ, "FUSEML_REGISTRY": self.registry.address,
                   "FUSEML_BASE_IMAGE": self.base, "FUSEML_BUILDER": "direct",
                   "FUSEML_COMPRESSION": "zstd" if self.name == "direct-zstd" else "gzip",
                   "FUSEML_REPOSITORY": repository, "PIP_CONFIG_FILE": os.devnull,
                   "PIP_INDEX_URL": self.index, "MLFLOW_STEPS_QUIET": "1",
                   "MLFLOW_STEPS_CACHE": str(self.root / "cache"),
                   "UV_CACHE_DIR": str(self.root / "uv-cache")}
            start_time = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "mlflow_steps", "build", str(codeset), "--force"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            memory = TreeMemory(process.pid)
            _, err = process.communicate()
            seconds = time.perf_counter() - start_time
            memory.stop()
            if process.returncode != 0:
                sys.exit(f"{self.name} {project} failed:\n{err[-3000:]}")
            self.memory = (max(self.memory[0], memory.total),
                           max(self.memory[1], memory.largest))
            return seconds, stored_bytes(self.registry) - before
        _, spec = resolve_env(codeset, BuildOptions(base_image=self.base))
        (codeset / "requirements.txt").write_text(requirements_text(spec))
        template = CAREFUL_DOCKERFILE if self.name == "careful" else PIP_DOCKERFILE
        (codeset / "Dockerfile").write_text(template.format(base=self.base, index=self.index))
        shutil.copy2(uv_binary(), codeset / "uv")
        reference = f"{self.registry.address}/{repository}:{project}"
        env = {**self.engine.env(), "DOCKER_BUILDKIT": "1"}
        start_time = time.perf_counter()
        run([docker_cli(), "build", "--network", "host", "-t", reference, str(codeset)], env)
        run([docker_cli(), "push", reference], env)
        return time.perf_counter() - start_time, stored_bytes(self.registry) - before

    def clear_images(self) -> None:
        """Drop this contender's images from the engine (disk), keeping the build cache."""
        names = self.engine.cli("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
        mine = [n for n in names.split() if f"/bench/{self.name}-" in n]
        if mine:
            self.engine.cli("rmi", *mine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=WHEELS,
                        help="the wheel cache (kept outside the repository)")
    args = parser.parse_args()
    ensure_wheels(args.wheels, sorted({*PROJECTS["warm"], *PROJECTS["second"],
                                       "mlflow-skinny<4", "boto3", *TOOLING_REQUIREMENTS}))
    names = ["direct", "direct-zstd", "careful", "pip"]
    results: dict[str, dict[str, float | int | None]] = {}
    memory: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="mls-gpu-index-", dir="/tmp") as index_dir, \
            fresh_stack() as (root, engine, registry, base, _):
        index, server = serve_index(args.wheels, Path(index_dir))
        try:
            for name in names:
                contender = Contender(name, engine, registry, base, index, root)
                engine.cli("builder", "prune", "-af")
                cold, cold_bytes = contender.build_push("first")
                row: dict[str, float | int | None] = {
                    "cold": cold, "cold pushed": cold_bytes / MB, "warm": None,
                    "warm pushed": None, "second": None, "second pushed": None}
                print(f"{name}: cold {cold:.1f} s, {cold_bytes / MB:.0f} MB", flush=True)
                if name != "direct-zstd":
                    warm, warm_bytes = contender.build_push("warm")
                    second, second_bytes = contender.build_push("second")
                    row.update({"warm": warm, "warm pushed": warm_bytes / MB,
                                "second": second, "second pushed": second_bytes / MB})
                    print(f"{name}: warm {warm:.1f} s, {warm_bytes / MB:.0f} MB; second "
                          f"{second:.1f} s, {second_bytes / MB:.0f} MB", flush=True)
                results[name] = row
                if name.startswith("direct"):
                    memory[name] = contender.memory
                contender.clear_images()
            engine_facts = docker_engine(engine.cli)
        finally:
            server.stop()
    report(results, memory, engine_facts, args)


def report(results: dict[str, dict[str, float | int | None]],
           memory: dict[str, tuple[int, int]], engine_facts: str,
           args: argparse.Namespace) -> None:
    direct, careful, pip = results["direct"], results["careful"], results["pip"]
    zstd = results["direct-zstd"]
    for name, row in results.items():
        print(f"{name:<12}" + "  ".join(
            f"{column} {value:.1f}" for column, value in row.items() if value is not None))
    for name, (total, largest) in memory.items():
        print(f"{name}: peak RSS {total / MB:.0f} MB (process tree), largest process "
              f"{largest / MB:.0f} MB (goal: tree <= 1000 MB)")
    ratios = [
        ratio("direct / careful, cold", direct["cold"] / careful["cold"], goal=0.5),
        ratio("direct / pip, cold", direct["cold"] / pip["cold"]),
        ratio("direct warm / direct cold", direct["warm"] / direct["cold"], goal=0.1),
        ratio("direct warm pushed", direct["warm pushed"], goal=50, unit="MB"),
        ratio("direct second / first, pushed", direct["second pushed"] / direct["cold pushed"],
              goal=0.1),
        ratio("careful warm / careful cold", careful["warm"] / careful["cold"]),
        ratio("careful second / first, pushed",
              careful["second pushed"] / careful["cold pushed"]),
        ratio("direct-zstd / direct, cold", zstd["cold"] / direct["cold"]),
        ratio("direct-zstd / direct, pushed", zstd["cold pushed"] / direct["cold pushed"]),
        ratio("direct peak RSS, process tree", memory["direct"][0] / MB, goal=1000,
              unit="MB"),
        ratio("direct-zstd peak RSS, process tree", memory["direct-zstd"][0] / MB,
              goal=1000, unit="MB"),
    ]
    for item in ratios:
        goal = "" if item["goal"] is None else f" (goal <= {item['goal']})"
        print(f"{item['name']}: {item['value']:.2f}{item['unit']}{goal}")
    write_result("gpu-env", __doc__.splitlines()[0], {"wheels": str(args.wheels)}, [
        table("Build and push of torch==2.14.1 (CUDA 13 wheels) + numpy",
              {"cold": "s", "cold pushed": "MB", "warm": "s", "warm pushed": "MB",
               "second": "s", "second pushed": "MB"}, results, LABELS)], ratios,
              engine=engine_facts)


if __name__ == "__main__":
    main()
