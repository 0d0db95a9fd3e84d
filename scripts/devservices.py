"""Real services for tests, benches and the demo: MLflow, PostgreSQL, an S3 look-alike.

Each listens on a free 127.0.0.1 port, keeps its data and log under a directory it is
given, and is stopped by ``stop()``. Process handling comes from ``devstack``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests
from devstack import Service, free_port, start, wait_until

BIN = Path(sys.executable).parent


@dataclass
class HttpServer:
    """A server process on a free 127.0.0.1 port, healthy once ``GET /health`` answers 200."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def defaults(self) -> dict[str, str]:
        """Environment the server gets unless ``env`` says otherwise."""
        return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.service = start(self.argv(), self.root / "server.log",
                             env={**os.environ, **self.defaults(), **self.env})
        wait_until(lambda: self.exited() or self.healthy(), 90,
                   f"{type(self).__name__} on port {self.port}")
        if self.exited():
            raise RuntimeError(f"{type(self).__name__} exited; see {self.service.log}")
        return self

    def exited(self) -> bool:
        return self.service is not None and self.service.process.poll() is not None

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/health", timeout=2).status_code == 200

    def stop(self) -> None:
        if self.service:
            self.service.stop()


@dataclass
class MlflowServer(HttpServer):
    """Plain `mlflow server`: sqlite store in ``root``; artifacts proxied (local or S3), or
    written by the clients themselves under ``default_artifact_root`` when that is set."""

    artifacts_destination: str | None = None
    default_artifact_root: str | None = None

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def argv(self) -> list[str]:
        argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", "1", "--backend-store-uri", self.backend_store_uri]
        if self.default_artifact_root:
            return [*argv, "--no-serve-artifacts",
                    "--default-artifact-root", self.default_artifact_root]
        destination = self.artifacts_destination or str(self.root / "artifacts")
        return [*argv, "--serve-artifacts", "--artifacts-destination", destination]


@dataclass
class TrackingServer(HttpServer):
    """Our `mlflow-steps server serve`; store, artifacts and token come from ``env``."""

    workers: int = 1

    def defaults(self) -> dict[str, str]:
        return {**super().defaults(),
                "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{self.root / 'mlflow.db'}",
                "MLFLOW_ARTIFACTS_DESTINATION": str(self.root / "artifacts")}

    def argv(self) -> list[str]:
        return [str(BIN / "mlflow-steps"), "server", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(self.workers)]


@dataclass
class MotoS3:
    """`moto_server`: an in-memory S3-compatible endpoint with fixed test credentials."""

    root: Path
    port: int = 0
    service: Service | None = None
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """What boto3 and MLflow need to use this endpoint."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url}

    def client(self):
        """A boto3 S3 client for this endpoint."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name``; return its ``s3://`` URI."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def start(self) -> MotoS3:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.service = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                             self.root / "moto.log")
        wait_until(lambda: requests.get(f"{self.endpoint_url}/moto-api/", timeout=2).ok, 60,
                   f"moto_server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.service:
            self.service.stop()


def postgres_bindir() -> Path:
    """The newest Debian PostgreSQL server binaries (apt `postgresql`)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    return found[-1].parent


@dataclass
class Postgres:
    """A private PostgreSQL cluster on a free loopback port, password auth, run as `postgres`.

    ``root`` must be reachable by the `postgres` user when we are root (the fixture makes a
    dedicated directory); the unix socket stays inside it.
    """

    root: Path
    user: str = "mlflow"
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    port: int = 0
    service: Service | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, database: str = "mlflow") -> str:
        """SQLAlchemy URL of ``database`` (psycopg2 driver, with the password)."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.address}/{database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def _client_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password, "PGHOST": "127.0.0.1",
                "PGPORT": str(self.port), "PGUSER": self.user}

    def start(self) -> Postgres:
        bindir = postgres_bindir()
        data, sockets = self.root / "data", self.root / "run"
        self.root.mkdir(parents=True, exist_ok=True)
        sockets.mkdir(exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            for path in (sockets, pwfile):
                shutil.chown(path, "postgres", "postgres")
        pwfile.chmod(0o600)
        if not data.exists():
            initdb = subprocess.run(self._as_owner(
                [str(bindir / "initdb"), "-D", str(data), "-U", self.user, "--auth=scram-sha-256",
                 f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8"]),
                capture_output=True, text=True, check=False)
            if initdb.returncode != 0:
                raise RuntimeError(f"initdb failed: {initdb.stderr.strip()}")
        self.port = self.port or free_port()
        self.service = start(self._as_owner(
            [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(sockets), "-c", "fsync=off", "-c", "full_page_writes=off"]),
            self.root / "postgres.log")
        wait_until(lambda: subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True).returncode == 0, 60, f"postgres on {self.address}")
        self.create_database("mlflow")
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URL."""
        subprocess.run([str(postgres_bindir() / "createdb"), name], env=self._client_env(),
                       check=True, capture_output=True)
        return self.url(name)

    def stop(self) -> None:
        if self.service:
            self.service.stop()
