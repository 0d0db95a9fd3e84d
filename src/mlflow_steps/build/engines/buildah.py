"""Buildah backend: daemonless build (chroot isolation by default) and push."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow_steps.build.engines.engine import Backend, BuildRequest
from mlflow_steps.core import interrupt
from mlflow_steps.env.pip_secrets import secret_arguments


def registries_conf(request: BuildRequest) -> str:
    """containers-registries.conf marking insecure registries; Docker Hub for short names."""
    hosts = dict.fromkeys(
        ref.registry for ref in (request.destination, request.base_image)
        if request.insecure(ref)
    )
    text = 'unqualified-search-registries = ["docker.io"]\n'
    for host in hosts:
        text += f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n'
    return text


def buildah_args(request: BuildRequest, digest_file: Path, cert_dir: Path | None,
                 isolation: str | None = "chroot") -> tuple[list[str], list[str]]:
    """Arguments of `buildah bud` and of `buildah push` for ``request``."""
    auth_file = request.docker_config / "config.json"
    tls = ["--authfile", str(auth_file)] if auth_file.is_file() else []
    if cert_dir:
        tls += ["--cert-dir", str(cert_dir)]
    build = ["bud", "--layers=false", "--format", "oci",
             "-f", str(request.context / "Dockerfile"), "-t", str(request.destination)]
    if isolation:
        build += ["--isolation", isolation]
    if request.source_date_epoch is not None:
        build += ["--timestamp", str(request.source_date_epoch)]
    build += secret_arguments(request.secrets)
    for key, value in sorted(request.labels.items()):
        build += ["--label", f"{key}={value}"]
    push = ["push", *tls, "--digestfile", str(digest_file), str(request.destination),
            f"docker://{request.destination}"]
    return [*build, *tls, str(request.context)], push


class BuildahBackend(Backend):
    """`buildah bud` + `buildah push --digestfile` with this machine's buildah."""

    name = "buildah"

    def unavailable_reason(self) -> str | None:
        return None if shutil.which("buildah", path=self.environ.get("PATH")) else (
            "buildah is not installed")

    def build_and_push(self, request: BuildRequest) -> None:
        with interrupt.private_directory("buildah-") as tmp:
            conf = tmp / "registries.conf"
            conf.write_text(registries_conf(request))
            env = {**self.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)}
            cert_dir = None
            if request.registry_ca:
                cert_dir = tmp / "certs"
                cert_dir.mkdir()
                shutil.copyfile(request.registry_ca, cert_dir / "ca.crt")
            isolation = None if "BUILDAH_ISOLATION" in self.environ else "chroot"
            build, push = buildah_args(request, tmp / "digest", cert_dir, isolation)
            # No cache at all: a store of its own, the base pulled afresh.
            store = (["--root", f"{tmp}/store", "--runroot", f"{tmp}/run"]
                     if request.no_cache else [])
            self.run_streaming(["buildah", *store, *build], env, "buildah bud")
            self.push(["buildah", *store, *push], env, "buildah push")
