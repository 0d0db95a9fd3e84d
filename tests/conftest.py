"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import MINIMAL_MLPROJECT, write_codeset


@pytest.fixture
def codeset(tmp_path: Path):
    """Factory: codeset(files) with a minimal MLproject unless one is given."""

    def make(files: dict[str, str | bytes], name: str = "codeset") -> Path:
        return write_codeset(tmp_path / name, {"MLproject": MINIMAL_MLPROJECT, **files})

    return make


@pytest.fixture(scope="session")
def stack_root():
    """A short private directory for daemons (unix socket paths must stay short)."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="mls-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_engine(stack_root):
    """A real dockerd on its own socket."""
    from devstack import DockerEngine

    engine = DockerEngine(stack_root / "docker").start()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def registry(stack_root):
    """A plain-HTTP docker-registry on a free loopback port."""
    from devstack import Registry

    reg = Registry(stack_root / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def tls_registry(stack_root):
    """A docker-registry behind TLS (self-signed CA) with htpasswd basic auth."""
    from devstack import Registry

    reg = Registry(stack_root / "tls-registry", tls=True, users={"alice": "s3cret-pass"}).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def base_image(docker_engine, registry):
    """The debootstrapped python base, pushed as REGISTRY/library/python:3.11-slim."""
    from devstack import push_base_image

    return push_base_image(docker_engine, registry)


@pytest.fixture(scope="session")
def buildah_env(stack_root):
    """Environment for buildah with private vfs storage."""
    import os

    storage = stack_root / "containers"
    storage.mkdir(exist_ok=True)
    conf = storage / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{storage}/graph"\n'
                    f'runroot = "{storage}/run"\n')
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "STORAGE_DRIVER": "vfs"}
