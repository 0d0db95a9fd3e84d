"""Build (and push) the project's own step images: `make images`, `make push REGISTRY=...`.

The build context is a clean copy of the package source (no venv, no tests) plus the
image's Dockerfile. Base images are build args: the base is `--base` (a Debian-based image
with python3, e.g. python:3.11-slim or your own), by default the locally made
Debian/Python base, and the docker CLI comes from an image made from the host's client.
The images go to the local stack's registry, then to `--registry` when given (host[:port],
optionally /NAMESPACE). pip configuration is forwarded the way the builder step does it, as
BuildKit secrets that never enter a layer. Bad options: one line, exit 2, before anything
starts.
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
from typing import IO, NoReturn

from devstack import DockerEngine, Registry, docker_cli, local_stack, push_base_image

from mlflow_steps.core.errors import StepError
from mlflow_steps.env.installer import uv_binary
from mlflow_steps.env.pip_secrets import secret_arguments, write_secret_files
from mlflow_steps.env.pipconfig import collect_pip_config
from mlflow_steps.image.reference import ImageRef, check_reference

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
    """Dockerfile + source/ (package with templates resolved) + tools/uv in ``target``."""
    target.mkdir()
    shutil.copy(dockerfile_dir / "Dockerfile", target / "Dockerfile")
    source = target / "source"
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    (target / "tools").mkdir()
    shutil.copy2(uv_binary(), target / "tools" / "uv")  # bind-mounted by the install step
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


def local_reference(registry: Registry, name: str, tag: str) -> str:
    """REGISTRY/<repository>:<tag>: where ``build`` pushes image ``name``."""
    return f"{registry.address}/{IMAGES[name][1]}:{tag}"


def build(engine: DockerEngine, registry: Registry, name: str, tag: str,
          base: str | None = None, output: IO[str] | None = None) -> str:
    """Build image ``name`` on ``base`` (default: the local base) and push it to
    ``registry``; its reference. The build's output goes to ``output`` (default: stdout)."""
    dockerfile_dir, _, target = IMAGES[name]
    reference = local_reference(registry, name, tag)
    build_args = {"BASE_IMAGE": base or push_base_image(engine, registry),
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
                       stdout=output, stderr=subprocess.STDOUT if output else None, check=True)
    engine.cli("push", reference)
    return reference


def remote(registry: str, name: str, tag: str) -> str:
    """REGISTRY/<repository>:<tag> for image ``name``, checked with the image-reference
    grammar; REGISTRY must start with a registry host, so the push goes where it says."""
    reference = check_reference(f"{registry}/{IMAGES[name][1]}:{tag}", source="images.py",
                                field="--registry")
    if ImageRef.parse(reference).registry != registry.split("/", 1)[0]:
        raise StepError(f"{registry!r} does not start with a registry host (host[:port], "
                        "optionally /NAMESPACE: localhost:5000, ghcr.io/me, docker.io/me)",
                        source="images.py", field="--registry")
    return reference


def _image_name(name: str) -> str:
    if name not in IMAGES:
        raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(IMAGES)}")
    return name


class _Parser(argparse.ArgumentParser):
    """argparse with the project's bad-input contract: one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, ``--base``, ``--tag`` and ``--registry`` checked before anything starts."""
    parser = _Parser(prog="images.py", description=__doc__.splitlines()[0])
    # Not choices=: Python 3.11's argparse checks an empty "*" list against them and fails.
    parser.add_argument("names", nargs="*", default=[], type=_image_name, metavar="NAME",
                        help=f"The images to build (default: all; {', '.join(IMAGES)}).")
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--base", metavar="IMAGE",
                        help="The base image to build on (Debian-based, with python3; "
                             "default: the locally made base).")
    parser.add_argument("--registry", "--push", metavar="REGISTRY",
                        help="Also tag and push to REGISTRY/<repository>:<tag> (REGISTRY: "
                             "host[:port], optionally /NAMESPACE; --push: the former name).")
    args = parser.parse_args(argv)
    args.names = args.names or list(IMAGES)
    try:
        if args.base:
            check_reference(args.base, source="images.py", field="--base")
        check_reference(f"{IMAGES['builder'][1]}:{args.tag}", source="images.py", field="--tag")
        args.remotes = {name: remote(args.registry, name, args.tag)
                        for name in args.names if args.registry}
    except StepError as exc:
        parser.exit(2, f"{exc}\n")
    return args


def publish(engine: DockerEngine, registry: Registry, args: argparse.Namespace) -> None:
    """Build the images ``args`` names on its base into ``registry``, then push each to
    ``--registry`` when given."""
    for name in args.names:
        reference = build(engine, registry, name, args.tag, args.base)
        print(f"built {reference}")
        if name in args.remotes:
            engine.cli("tag", reference, args.remotes[name])
            subprocess.run([docker_cli(), "push", args.remotes[name]], env=engine.env(),
                           check=True)
            print(f"pushed {args.remotes[name]}")


def main() -> None:
    args = parse_args()
    with local_stack() as (engine, registry):
        publish(engine, registry, args)


if __name__ == "__main__":
    sys.exit(main())
