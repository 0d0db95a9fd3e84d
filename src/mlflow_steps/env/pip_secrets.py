"""Pip-secret delivery: the one place the build-time pip configuration (parsed by
:mod:`mlflow_steps.env.pipconfig`; its index URLs may carry credentials) leaves this process.

It never becomes a build argument, a layer, a log line or part of the tag. Its routes:

- a Dockerfile build (Docker/BuildKit, Buildah, the Kaniko plan): ``pip.conf``, its uv
  equivalent and the CA bundle as private files in the build's scratch directory
  (:func:`write_secret_files`), handed to the engine as secrets (:func:`secret_arguments`)
  and mounted only in the RUN steps that install (:func:`run_mounts`);
- uv run on this machine (the direct builder, ``--resolve``): its process environment
  (:func:`uv_process_env`);
- a step container (the local workflow runner, a Tekton Secret): ``pip.conf`` (+ ``ca.pem``)
  read-only at :data:`CONFIG_MOUNT`, named by :data:`CONFIG_MOUNT_ENV`
  (:func:`write_config_mount`; :data:`TEKTON_SECRET_TEMPLATE`).

The files go away with the scratch directory they are written into, which its owner
removes (the build's workspace, the plan's ``secrets`` directory at ``verify``, the
runner's directory when the step ends).

It lives in ``env/`` beside the parser of that configuration; the builders, ``--resolve``
(:mod:`mlflow_steps.build.pinning`) and the workflow runner deliver through it.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.env.pipconfig import BuildPipConfig

PIP_CONFIG_SECRET = "pip-config"
UV_CONFIG_SECRET = "uv-config"
PIP_CA_SECRET = "pip-ca"
# Where RUN steps find the build-time uv settings (a secret mount; absent without any).
UV_CONFIG_TARGET = "/run/secrets/uv.env"
SECRET_MOUNT_TARGETS = {
    PIP_CONFIG_SECRET: "/etc/pip.conf",
    UV_CONFIG_SECRET: UV_CONFIG_TARGET,
    PIP_CA_SECRET: "/run/secrets/pip-ca.pem",
}
# Where a step container (our builder image) is given the config: a file mount, never env
# values.
CONFIG_MOUNT = "/run/mlflow-steps/pip"
CONFIG_MOUNT_ENV = {"PIP_CONFIG_FILE": f"{CONFIG_MOUNT}/pip.conf"}
# The conda channel configuration travels in the same Tekton Secret (channel_alias may
# carry credentials too).
CONDARC_MOUNT_ENV = {"CONDARC": f"{CONFIG_MOUNT}/condarc"}
TEKTON_SECRET_TEMPLATE = {"pip.conf": "[global]\n",
                          "condarc": "# channel_alias: https://user:password@mirror.example/\n"}
UV_KEPT = ("UV_CACHE_DIR",)  # the host's uv settings that never change what is installed


@dataclass(frozen=True)
class PipConfigDelivery:
    """How the RUN steps that install see the build-time pip config without it entering a
    layer: secret mounts (``mounts``: id → target)."""

    mounts: tuple[tuple[str, str], ...] = ()

    def prefix(self) -> str:
        """Words to put right after RUN in pip-using steps."""
        return "".join(f"--mount=type=secret,id={i},target={t} " for i, t in self.mounts)


NO_MOUNTS = PipConfigDelivery()  # no config to forward (and what `render` writes)


def pip_conf(pip: BuildPipConfig, ca_target: str | None) -> str:
    """pip.conf text for the build (may contain credentials: a secret)."""
    lines = ["[global]"]
    if pip.index_url:
        lines.append(f"index-url = {pip.index_url}")
    if pip.extra_index_urls:
        lines.append("extra-index-url = " + " ".join(pip.extra_index_urls))
    if pip.trusted_hosts:
        lines.append("trusted-host = " + " ".join(pip.trusted_hosts))
    if pip.ca_bundle and ca_target:
        lines.append(f"cert = {ca_target}")
    return "\n".join(lines) + "\n"


def uv_settings(pip: BuildPipConfig, ca_target: str | None) -> dict[str, str]:
    """The same settings for uv, as environment variables (secrets too)."""
    values = {"UV_INDEX_URL": pip.index_url or "",
              "UV_EXTRA_INDEX_URL": " ".join(pip.extra_index_urls),
              "UV_INSECURE_HOST": " ".join(pip.trusted_hosts),
              "SSL_CERT_FILE": ca_target if pip.ca_bundle and ca_target else ""}
    return {key: value for key, value in values.items() if value}


def uv_env(pip: BuildPipConfig, ca_target: str | None) -> str:
    """``uv_settings`` as a shell env file (a secret too)."""
    return "".join(f"{key}={shlex.quote(value)}\n"
                   for key, value in uv_settings(pip, ca_target).items())


def uv_process_secrets(pip: BuildPipConfig) -> list[str]:
    """The values ``uv_process_env`` adds that may be secret (to mask in uv's errors)."""
    return list(uv_settings(pip, _ca_here(pip)).values())


def uv_process_env(pip: BuildPipConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for running uv here: its own UV_* settings replaced by the forwarded ones
    (the CA bundle where it is; its cache directory kept: where files are kept does not
    change what is installed), no progress bars, no Python downloads."""
    env = {key: value for key, value in environ.items()
           if not key.startswith("UV_") or key in UV_KEPT}
    env.update(uv_settings(pip, _ca_here(pip)), UV_NO_PROGRESS="1",
               UV_PYTHON_DOWNLOADS="never")
    return env


def _ca_here(pip: BuildPipConfig) -> str | None:
    return str(pip.ca_bundle) if pip.ca_bundle else None


def run_mounts(pip: BuildPipConfig) -> PipConfigDelivery:
    """The secret mounts of the RUN steps that install (none without a config), the same
    with every engine (BuildKit, Buildah, Kaniko's ``--secret``)."""
    if pip.empty:
        return NO_MOUNTS
    ids = [PIP_CONFIG_SECRET, UV_CONFIG_SECRET] + ([PIP_CA_SECRET] if pip.ca_bundle else [])
    return PipConfigDelivery(mounts=tuple((i, SECRET_MOUNT_TARGETS[i]) for i in ids))


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


def _copy_private(source: Path, path: Path) -> Path:
    shutil.copyfile(source, path)
    path.chmod(0o600)
    return path


def write_secret_files(directory: Path, pip: BuildPipConfig) -> dict[str, Path]:
    """pip.conf, its uv equivalent (+ the CA bundle) as private files in ``directory`` for
    the engine's secret mounts: secret id → file (none without a config)."""
    if pip.empty:
        return {}
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_target = SECRET_MOUNT_TARGETS[PIP_CA_SECRET] if pip.ca_bundle else None
    secrets = {PIP_CONFIG_SECRET: _write_private(directory / "pip.conf",
                                                 pip_conf(pip, ca_target)),
               UV_CONFIG_SECRET: _write_private(directory / "uv.env", uv_env(pip, ca_target))}
    if pip.ca_bundle:
        secrets[PIP_CA_SECRET] = _copy_private(pip.ca_bundle, directory / "pip-ca.pem")
    return secrets


def secret_arguments(secrets: Mapping[str, Path], *, joined: bool = False) -> list[str]:
    """An engine's ``--secret`` arguments for ``secrets`` (id → file): Docker and Buildah
    take two words each, Kaniko one (``joined``)."""
    values = [f"id={secret_id},src={path}" for secret_id, path in sorted(secrets.items())]
    if joined:
        return [f"--secret={value}" for value in values]
    return [word for value in values for word in ("--secret", value)]


def write_config_mount(directory: Path, pip: BuildPipConfig, image_user: str) -> bool:
    """``pip`` as ``pip.conf`` (+ ``ca.pem``) in ``directory``, to mount at
    :data:`CONFIG_MOUNT`: private to the image's user (given to a numeric ``uid[:gid]`` when
    we can chown). False (nothing written) when there is none to forward."""
    if pip.empty:
        return False
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    ca_target = f"{CONFIG_MOUNT}/ca.pem" if pip.ca_bundle else None
    if pip.ca_bundle:
        _copy_private(pip.ca_bundle, directory / "ca.pem")
    _write_private(directory / "pip.conf", pip_conf(pip, ca_target))
    uid, _, gid = image_user.partition(":")
    if uid.isdigit() and int(uid) != os.geteuid() and os.geteuid() == 0:
        for path in (directory, *directory.iterdir()):
            os.chown(path, int(uid), int(gid) if gid.isdigit() else -1)
    return True
