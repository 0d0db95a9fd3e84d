"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import progress
from support.helpers import MINIMAL_MLPROJECT, write_codeset
from support.locks import lock_index  # noqa: F401 - shared fixture
from support.synthetic_base import (  # noqa: F401 - shared fixtures
    no_engine,
    synthetic_base,
    warm_cache,
)

# Tests that drive a container engine (Docker or Buildah) are marked `engine`: `make test`
# runs them in one pytest process and the rest in another, side by side.
ENGINE_FIXTURES = frozenset({"docker_engine", "buildah_env"})


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module imports MLflow (PYTEST_CURRENT_TEST, which turns its telemetry
    # off too, is unset while modules are collected): the telemetry threads would call out and
    # unset a variable of os.environ while a test iterates it (KeyError). Commands under test
    # get environments without MLFLOW_* (clean_env) where their telemetry is the point.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    progress.register(config)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the mark
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.engine)


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


@pytest.fixture(scope="module")
def token_registry(stack_root):
    """A registry with bearer auth from our token server (user bob, refresh token
    refresh-123), one per test module, so each module sees only its own token requests."""
    import tempfile

    from devstack import Registry
    from support.token_server import ISSUER, SERVICE, TokenServer

    directory = Path(tempfile.mkdtemp(prefix="token-", dir=stack_root))
    tokens = TokenServer(directory, {"bob": "bob-pass"}, {"refresh-123"})
    reg = Registry(directory / "registry", token_auth={
        "realm": tokens.realm, "service": SERVICE, "issuer": ISSUER,
        "rootcertbundle": str(tokens.bundle)}).start()
    yield reg, tokens
    reg.stop()
    tokens.stop()


@pytest.fixture(scope="session")
def base_image(docker_engine, registry):
    """The debootstrapped python base, pushed as REGISTRY/library/python:3.11-slim."""
    from devstack import push_base_image

    return push_base_image(docker_engine, registry)


@pytest.fixture(scope="session")
def builder_image(docker_engine, registry, base_image):
    """The builder step image (target `builder`), built from the local bases."""
    from images import build

    return build(docker_engine, registry, "builder", "test")


@pytest.fixture(scope="session")
def serve_image(builder_image, docker_engine, registry):
    """The serving step image (target `serve`; shares the builder's layers)."""
    from images import build

    return build(docker_engine, registry, "serve", "test")


@pytest.fixture(scope="session")
def trainer_image(docker_engine, registry, base_image) -> str:
    """examples/sklearn-logreg built by the builder step and pushed: its reference. Built
    by the direct builder (the default), a fraction of Docker's time; the Docker path builds
    the example in test_builder_e2e.py."""
    from support.helpers import EXAMPLE, run_cli

    env = {**docker_engine.env(), "FUSEML_REGISTRY": registry.address,
           "FUSEML_PULL_REGISTRY": registry.address, "FUSEML_BASE_IMAGE": base_image,
           "FUSEML_BUILDER": "direct"}
    result = run_cli("build", str(EXAMPLE), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


@pytest.fixture(scope="session")
def buildah_env(stack_root):
    """Environment for buildah with private storage (overlay where it mounts, else vfs)."""
    from devstack import buildah_env as storage_env

    return storage_env(stack_root)


@pytest.fixture(scope="session")
def mlflow_server(stack_root):
    """A plain `mlflow server` (sqlite store, proxied local artifacts): `.url`."""
    from devservices import MlflowServer

    server = MlflowServer(stack_root / "mlflow").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(stack_root):
    """An S3-compatible endpoint (moto_server): `.endpoint_url`, `.client_env()`, buckets."""
    from devservices import MotoS3

    s3 = MotoS3(stack_root / "s3").start()
    yield s3
    s3.stop()


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL on a loopback port: `.url(db)`, `.create_database(name)`."""
    import shutil
    import tempfile

    from devservices import Postgres

    root = Path(tempfile.mkdtemp(prefix="mls-pg-", dir="/tmp"))
    server = Postgres(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def workflow_step_images(docker_engine, registry, base_image):
    """Two tiny step images (plain, and labelled to get the engine socket and the pip
    configuration): references."""
    context = Path(__file__).parent / "data" / "workflows" / "step-image"
    plain = f"{registry.address}/mls-test/step:plain"
    socket = f"{registry.address}/mls-test/step:socket"
    docker_engine.cli("build", "-t", plain, "--build-arg", f"BASE={base_image}", str(context))
    docker_engine.cli("build", "-t", socket, "--build-arg", f"BASE={base_image}",
                      "--label", "org.mlflow-steps.engine-socket=true",
                      "--label", "org.mlflow-steps.pip-config=true", str(context))
    return plain, socket


@pytest.fixture(scope="session")
def warm_server_cli():
    """`mlflow-steps server ...` commands, each in a process of its own forked from one
    interpreter that imported the server CLI and MLflow's server once (what `serve` execs
    replaces that child, never the test process): `.run(*args, env=...)`."""
    from support.cli_batch import Warm
    from support.server_testing import clean_env

    runner = Warm(["mlflow_steps.cli.main", "mlflow_steps.cli.server", "mlflow.server",
                   "mlflow.store.tracking.sqlalchemy_store"],
                  clean_env(MLFLOW_DISABLE_TELEMETRY="true"))
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def old_python() -> Path:
    """Python of a venv with an older MLflow (cached under ~/.cache; made when missing)."""
    from support.server_testing import older_mlflow_python

    return older_mlflow_python()


@pytest.fixture(scope="session")
def conda_channel():
    """A real local conda channel (python 3.11, pip, six, packaging, markupsafe, probe-data),
    served as conda-forge through its ``alias_url``."""
    from support.conda_channel import build_channel

    return build_channel()
