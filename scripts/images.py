"""Build (and push) the project's own step images: `make images`, `make push REGISTRY=...`.

The build context is a clean copy of the package source (no venv, no tests) plus the
image's Dockerfile. Base images are build args: on this machine they are the locally made
Debian/Python base and a docker-CLI image made from the host's client, since no public
registry is reachable. pip configuration is forwarded the way the builder step does it,
as BuildKit secrets that never enter a layer.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from devstack import DockerEngine, Registry, docker_cli, local_stack, push_base_image

from mlflow_steps.env.pip_secrets import secret_arguments, write_secret_files
from mlflow_steps.env.pipconfig import collect_pip_config

REPO = Path(__file__).resolve().parents[1]
BUILDER_DIR = REPO / "images" / "builders" / "mlflow"
# name: (Dockerfile directory, repository, target built here)
IMAGES = {
    "builder": (BUILDER_DIR, "mlflow-steps/builder", "builder"),
    "serve": (BUILDER_DIR, "mlflow-steps/serve", "serve"),
    "tracking-server": (REPO / "images" / "tracking-server" / "mlflow",
                        "mlflow-steps/tracking-server", None),
}
SOURCE_FILES = ("pyproject.toml", "README.md")
DOCKER_CLI_NAME = "library/docker:cli-local"


def write_context(dockerfile_dir: Path, target: Path) -> Path:
    """Dockerfile + source/ (package with templates resolved) in ``target``."""
    target.mkdir()
    shutil.copy(dockerfile_dir / "Dockerfile", target / "Dockerfile")
    source = target / "source"
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return target


def pip_secrets(directory: Path) -> list[str]:
    """`--secret` arguments carrying this machine's pip config (files in ``directory``)."""
    return secret_arguments(write_secret_files(directory, collect_pip_config(dict(os.environ))))


def push_docker_cli_image(engine: DockerEngine, registry: Registry) -> str:
    """REGISTRY/library/docker:cli-local: the host's BuildKit-capable docker client."""
    reference = f"{registry.address}/{DOCKER_CLI_NAME}"
    if engine.cli("image", "inspect", reference, check=False).returncode != 0:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(docker_cli(), arcname="usr/local/bin/docker")
            plugins = tarfile.TarInfo("usr/local/libexec/docker/cli-plugins")
            plugins.type, plugins.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(plugins)
        subprocess.run([docker_cli(), "import", "-", reference], input=buffer.getvalue(),
                       env=engine.env(), check=True, capture_output=True)
    engine.cli("push", reference)
    return reference


def build(engine: DockerEngine, registry: Registry, name: str, tag: str) -> str:
    """Build image ``name`` from local bases and push it to ``registry``; its reference."""
    dockerfile_dir, repository, target = IMAGES[name]
    reference = f"{registry.address}/{repository}:{tag}"
    build_args = {"BASE_IMAGE": push_base_image(engine, registry),
                  "DOCKER_CLI_IMAGE": push_docker_cli_image(engine, registry)}
    with tempfile.TemporaryDirectory(prefix="mls-image-") as tmp:
        context = write_context(dockerfile_dir, Path(tmp) / "context")
        secrets_dir = Path(tmp) / "secrets"
        secrets_dir.mkdir(mode=0o700)
        argv = [docker_cli(), "build", "--progress", "plain", "-t", reference,
                *pip_secrets(secrets_dir)]
        argv += [f"--build-arg={key}={value}" for key, value in build_args.items()]
        if target:
            argv += ["--target", target]
        subprocess.run([*argv, str(context)], env={**engine.env(), "DOCKER_BUILDKIT": "1"},
                       check=True)
    engine.cli("push", reference)
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(IMAGES), choices=list(IMAGES))
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--push", metavar="REGISTRY",
                        help="Also tag and push to REGISTRY/<repository>:<tag>.")
    args = parser.parse_args()
    with local_stack() as (engine, registry):
        for name in args.names:
            reference = build(engine, registry, name, args.tag)
            print(f"built {reference}")
            if args.push:
                remote = f"{args.push}/{IMAGES[name][1]}:{args.tag}"
                engine.cli("tag", reference, remote)
                subprocess.run([docker_cli(), "push", remote], env=engine.env(), check=True)
                print(f"pushed {remote}")


if __name__ == "__main__":
    sys.exit(main())
