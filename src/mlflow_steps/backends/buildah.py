"""Buildah backend: daemonless build (chroot isolation by default) and push."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mlflow_steps.backends.base import Backend, BuildRequest


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


class BuildahBackend(Backend):
    """`buildah bud` + `buildah push --digestfile`."""

    name = "buildah"

    def unavailable_reason(self) -> str | None:
        return None if shutil.which("buildah", path=self.environ.get("PATH")) else (
            "buildah is not installed")

    def build_and_push(self, request: BuildRequest) -> None:
        with tempfile.TemporaryDirectory(prefix="buildah-") as tmp:
            conf = Path(tmp) / "registries.conf"
            conf.write_text(registries_conf(request))
            env = {**self.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)}
            auth_file = request.docker_config / "config.json"
            tls = ["--authfile", str(auth_file)] if auth_file.is_file() else []
            if request.registry_ca:
                cert_dir = Path(tmp) / "certs"
                cert_dir.mkdir()
                shutil.copyfile(request.registry_ca, cert_dir / "ca.crt")
                tls += ["--cert-dir", str(cert_dir)]
            argv = ["buildah", "bud", "--layers=false", "--format", "oci",
                    "-f", str(request.context / "Dockerfile"), "-t", str(request.destination)]
            if "BUILDAH_ISOLATION" not in self.environ:
                argv += ["--isolation", "chroot"]
            for secret_id, path in sorted(request.secrets.items()):
                argv += ["--secret", f"id={secret_id},src={path}"]
            self.run_streaming([*argv, *tls, str(request.context)], env, "buildah bud")
            self.push(["buildah", "push", *tls, str(request.destination),
                       f"docker://{request.destination}"], env, "buildah push")
