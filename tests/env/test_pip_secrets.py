"""Pip-secret delivery: the files, mounts, arguments and uv environment the build-time pip
configuration reaches a build through (parsing: test_pipconfig.py)."""

from __future__ import annotations

import stat
from pathlib import Path

from mlflow_steps.env.pip_secrets import (
    CONFIG_MOUNT,
    NO_MOUNTS,
    run_mounts,
    secret_arguments,
    uv_env,
    uv_process_env,
    uv_process_secrets,
    write_config_mount,
    write_secret_files,
)
from mlflow_steps.env.pipconfig import BuildPipConfig

TOKEN = "s3cret-Tok3n"


def config(tmp_path: Path) -> BuildPipConfig:
    ca = tmp_path / "ca.pem"
    ca.write_text("CA")
    return BuildPipConfig(index_url=f"https://bob:{TOKEN}@mirror.example/simple",
                          trusted_hosts=("mirror.example",), ca_bundle=ca)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_uv_env_carries_the_same_settings_quoted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("CA")
    pip = BuildPipConfig(index_url="https://u:p$w'd@mirror.example/simple",
                         extra_index_urls=("https://a.example/s", "https://b.example/s"),
                         trusted_hosts=("mirror.example",), ca_bundle=ca)
    assert uv_env(pip, "/run/secrets/pip-ca.pem").splitlines() == [
        "UV_INDEX_URL='https://u:p$w'\"'\"'d@mirror.example/simple'",
        "UV_EXTRA_INDEX_URL='https://a.example/s https://b.example/s'",
        "UV_INSECURE_HOST=mirror.example", "SSL_CERT_FILE=/run/secrets/pip-ca.pem"]
    assert uv_env(BuildPipConfig(), None) == ""


def test_uv_process_env_keeps_the_cache_and_drops_the_hosts_index(tmp_path: Path) -> None:
    """uv runs here with the forwarded index only; the host's cache directory is kept (the
    direct builder hard-links from it, a bench gives each build an empty one)."""
    env = uv_process_env(BuildPipConfig(index_url="https://mirror.example/simple"),
                         {"UV_CACHE_DIR": "/caches/uv", "UV_INDEX_URL": "https://host.example/s",
                          "UV_EXTRA_INDEX_URL": "https://other.example/simple",
                          "HOME": "/home/x"})
    assert env["UV_CACHE_DIR"] == "/caches/uv" and env["HOME"] == "/home/x"
    assert env["UV_INDEX_URL"] == "https://mirror.example/simple"
    assert "other.example" not in env.get("UV_EXTRA_INDEX_URL", "")
    pip = config(tmp_path)
    assert uv_process_env(pip, {})["SSL_CERT_FILE"] == str(pip.ca_bundle)
    assert any(TOKEN in value for value in uv_process_secrets(pip))


def test_secret_files_are_private_and_mounted_where_the_dockerfile_reads_them(
        tmp_path: Path) -> None:
    pip = config(tmp_path)
    secrets = write_secret_files(tmp_path / "secrets", pip)
    assert set(secrets) == {"pip-config", "uv-config", "pip-ca"}
    assert mode(tmp_path / "secrets") == 0o700
    assert all(mode(path) == 0o600 for path in secrets.values())
    assert TOKEN in secrets["pip-config"].read_text()
    assert "cert = /run/secrets/pip-ca.pem" in secrets["pip-config"].read_text()
    assert "SSL_CERT_FILE=/run/secrets/pip-ca.pem" in secrets["uv-config"].read_text()
    assert run_mounts(pip).mounts == (("pip-config", "/etc/pip.conf"),
                                      ("uv-config", "/run/secrets/uv.env"),
                                      ("pip-ca", "/run/secrets/pip-ca.pem"))
    assert secret_arguments(secrets)[:2] == ["--secret", f"id=pip-ca,src={secrets['pip-ca']}"]
    assert secret_arguments(secrets, joined=True)[0] == \
        f"--secret=id=pip-ca,src={secrets['pip-ca']}"


def test_nothing_to_forward_writes_nothing(tmp_path: Path) -> None:
    assert write_secret_files(tmp_path / "secrets", BuildPipConfig()) == {}
    assert run_mounts(BuildPipConfig()) == NO_MOUNTS and NO_MOUNTS.prefix() == ""
    assert not write_config_mount(tmp_path / "mount", BuildPipConfig(), "1000")
    assert not (tmp_path / "secrets").exists() and not (tmp_path / "mount").exists()


def test_config_mount_names_its_ca_where_the_step_sees_it(tmp_path: Path) -> None:
    directory = tmp_path / "mount"
    assert write_config_mount(directory, config(tmp_path), "root")
    assert sorted(p.name for p in directory.iterdir()) == ["ca.pem", "pip.conf"]
    assert f"cert = {CONFIG_MOUNT}/ca.pem" in (directory / "pip.conf").read_text()
    assert mode(directory) == 0o700 and mode(directory / "pip.conf") == 0o600
