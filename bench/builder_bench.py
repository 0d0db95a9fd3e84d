"""Builder step: cold build vs skip path, and our image size vs a naive Dockerfile.

Everything runs in one go on a fresh Docker engine (empty layer cache) and a fresh
registry, so the numbers sit side by side:
  * cold: `mlflow-steps build` of examples/sklearn-logreg, nothing cached;
  * skip: the same command again (the tag exists, no engine call), median of 3, in the
    step's own environment (a venv with `.[builder]`, as the builder image installs it:
    mlflow-skinny) and in the dev venv (full MLflow, whose import alone takes ~1.8 s);
  * naive: the original FuseML style (apt-get install git, pip upgrade, pip cache kept,
    whole codeset copied) for the same requirements, on the same base.
Usage: python bench/builder_bench.py
"""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from devstack import CACHE, DockerEngine, Registry, docker_cli, push_base_image  # noqa: E402

from images import pip_secrets  # noqa: E402
from mlflow_steps.envspec import BuildOptions, resolve_env  # noqa: E402
from mlflow_steps.render import requirements_text  # noqa: E402

EXAMPLE = REPO / "examples" / "sklearn-logreg"
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


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(argv[:3])}...\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def step_python() -> Path:
    """A venv with what the builder image installs (`.[builder]`), cached per pyproject."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = CACHE / f"bench-step-venv-{digest}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", f"{REPO}[builder]"],
                       check=True, capture_output=True)
        (venv / ".complete").touch()
    return python


def median_seconds(argv: list[str], env: dict[str, str], runs: int = 3) -> float:
    return statistics.median(timed(argv, env) for _ in range(runs))


def image_size(engine: DockerEngine, reference: str) -> int:
    return int(engine.cli("image", "inspect", "--format", "{{.Size}}", reference).stdout)


def naive_build(engine: DockerEngine, base: str, workdir: Path) -> tuple[float, str]:
    """Build the naive image for the example's requirements; return (seconds, reference)."""
    context = workdir / "naive"
    subprocess.run(["cp", "-r", str(EXAMPLE), str(context)], check=True)
    _, spec = resolve_env(EXAMPLE, BuildOptions(base_image=base))
    (context / "requirements.txt").write_text(requirements_text(spec))
    (context / "Dockerfile").write_text(NAIVE_DOCKERFILE.format(base=base))
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir(mode=0o700)
    reference = "bench/naive:latest"
    seconds = timed([docker_cli(), "build", "-t", reference, *pip_secrets(secrets_dir),
                     str(context)], {**engine.env(), "DOCKER_BUILDKIT": "1"})
    return seconds, reference


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mls-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        engine = DockerEngine(root / "docker").start()
        registry = Registry(root / "registry").start()
        try:
            base = push_base_image(engine, registry)
            env = {**engine.env(), "FUSEML_REGISTRY": registry.address,
                   "FUSEML_BASE_IMAGE": base, "FUSEML_BUILDER": "docker"}
            build = [str(step_python()), "-m", "mlflow_steps", "build", str(EXAMPLE)]
            cold = timed(build, env)
            skip = median_seconds(build, env)
            skip_dev = median_seconds([sys.executable, *build[1:]], env)
            tag = subprocess.run(build, env=env, capture_output=True, text=True,
                                 check=True).stdout.strip().rsplit(":", 1)[1]
            ours = image_size(engine, f"{registry.address}/mlflow/trainer:{tag}")
            naive_seconds, naive_ref = naive_build(engine, base, root)
            naive = image_size(engine, naive_ref)
            base_size = image_size(engine, base)
        finally:
            registry.stop()
            engine.stop()
    print(f"cold build          {cold:8.1f} s")
    print(f"skip path           {skip:8.2f} s   (target < 2 s; step venv, mlflow-skinny)")
    print(f"skip path, dev venv {skip_dev:8.2f} s   (full MLflow installed)")
    print(f"cold / skip         {cold / skip:8.1f} x")
    print(f"naive build         {naive_seconds:8.1f} s   (base already pulled)")
    mb = 1 << 20
    print(f"base image          {base_size / mb:8.0f} MB")
    for label, size in (("our image", ours), ("naive image", naive)):
        print(f"{label:<20}{size / mb:8.0f} MB   (+{(size - base_size) / mb:.0f} MB on base)")
    print(f"ours / naive        {ours / naive:8.2f}     (target < 1)")


if __name__ == "__main__":
    main()
