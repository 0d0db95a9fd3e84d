"""Local real infrastructure for the demo, tests and benches.

A Docker engine on its own socket, OCI registries (plain, or TLS + htpasswd) on free
loopback ports, and a debootstrapped Debian/Python base image cached under ~/.cache.
Everything started here is stopped by ``close()``; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

CACHE = Path(os.environ.get("MLFLOW_STEPS_CACHE", Path.home() / ".cache" / "mlflow-steps"))
ROOTFS = CACHE / "rootfs-bookworm"
ROOTFS_TAR = CACHE / "rootfs-bookworm.tar"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates,passwd"
ARM64_ROOTFS_TAR = CACHE / "rootfs-bookworm-arm64-v3.tar"
ARM64_PACKAGES = "python3,python3-venv,ca-certificates,passwd"
# Debian's arm64 python3.11 debs, as debootstrap fetched and checked them for that rootfs (the
# test conda channel repackages them as an arm64 conda `python`)
ARM64_PYTHON_DEBS = CACHE / "debs-bookworm-arm64-python-v1"
BASE_PYTHON = "3.11"
BASE_NAME = f"library/python:{BASE_PYTHON}-slim"
# Set in the image config as public bases do: Kaniko and Buildah run RUN steps with only
# the image's own environment.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    """Poll ``check()`` until it is truthy, or raise with ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Service:
    """A process we started, with its log."""

    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Service:
    """Start ``argv`` in its own process group, output to ``log``."""
    handle = log.open("wb")
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    return Service(process, log)


def storage_driver(root: Path) -> str:
    """overlay2 when this kernel lets us mount an overlay under ``root``, else vfs.

    vfs copies a whole image for every container and layer; overlay2 does not. Set
    MLFLOW_STEPS_DOCKER_STORAGE to force one.
    """
    if os.environ.get("MLFLOW_STEPS_DOCKER_STORAGE"):
        return os.environ["MLFLOW_STEPS_DOCKER_STORAGE"]
    with tempfile.TemporaryDirectory(dir=root) as probe:
        dirs = {name: Path(probe) / name for name in ("lower", "upper", "work", "merged")}
        for directory in dirs.values():
            directory.mkdir()
        options = (f"lowerdir={dirs['lower']},upperdir={dirs['upper']},"
                   f"workdir={dirs['work']}")
        mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options,
                                  str(dirs["merged"])], capture_output=True, check=False)
        if mounted.returncode != 0:
            return "vfs"
        subprocess.run(["umount", str(dirs["merged"])], capture_output=True, check=False)
        return "overlay2"


@dataclass
class DockerEngine:
    """dockerd on a private socket (overlay2 where it works, else vfs)."""

    root: Path
    service: Service | None = None
    socket_path: Path | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path or self.root / 'docker.sock'}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def cli(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([docker_cli(), *args], env=self.env(), check=check,
                              capture_output=True, text=True, **kwargs)

    def start(self) -> DockerEngine:
        self.root.mkdir(parents=True, exist_ok=True)
        self.service = start(
            ["dockerd", "--storage-driver", storage_driver(self.root),
             "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "-p", str(self.root / "docker.pid"), "-H", self.host],
            self.root / "dockerd.log",
        )
        wait_until(lambda: self.cli("version", check=False).returncode == 0, 60, "dockerd")
        return self

    def stop(self) -> None:
        """Stop dockerd and unmount what it leaves under its root (its netns file)."""
        if self.service:
            self.service.stop()
        root = f"{self.root.resolve()}/"
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[1].startswith(root)]
        for point in sorted(points, reverse=True):
            subprocess.run(["umount", point], capture_output=True, check=False)


def docker_cli() -> str:
    """A docker client whose `build` supports BuildKit secrets (Debian's 20.10 has it built in)."""
    return os.environ.get("MLFLOW_STEPS_DOCKER_CLI") or (
        "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker")


@dataclass
class Registry:
    """A docker-registry (CNCF distribution) on a free loopback port."""

    root: Path
    tls: bool = False
    users: dict[str, str] = field(default_factory=dict)
    token_auth: dict[str, str] | None = None
    readonly: bool = False
    port: int = 0
    service: Service | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.crt"

    def start(self) -> Registry:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        http: dict[str, object] = {"addr": self.address, "secret": os.urandom(8).hex()}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")},
                        "delete": {"enabled": True},
                        "maintenance": {"readonly": {"enabled": self.readonly}}},
            "http": http,
        }
        if self.tls:
            self._make_certificates()
            http["tls"] = {"certificate": str(self.root / "server.crt"),
                           "key": str(self.root / "server.key")}
        if self.users:
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text("")
            for user, password in self.users.items():
                subprocess.run(["htpasswd", "-bB", str(htpasswd), user, password], check=True,
                               capture_output=True)
            config["auth"] = {"htpasswd": {"realm": "mlflow-steps-test", "path": str(htpasswd)}}
        if self.token_auth:
            config["auth"] = {"token": self.token_auth}
        import yaml

        (self.root / "config.yml").write_text(yaml.safe_dump(config))
        self.service = start(["docker-registry", "serve", str(self.root / "config.yml")],
                             self.root / "registry.log")
        verify = str(self.ca_file) if self.tls else True
        wait_until(lambda: requests.get(f"{self.url}/v2/", timeout=2, verify=verify)
                   .status_code in (200, 401), 30, f"registry on {self.address}")
        return self

    def _make_certificates(self) -> None:
        key, crt = self.root / "ca.key", self.ca_file
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=mlflow-steps test CA", "-keyout", str(key), "-out", str(crt))
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(self.root / "server.key"), "-out", str(self.root / "server.csr"))
        ext = self.root / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("openssl", "x509", "-req", "-in", str(self.root / "server.csr"), "-CA", str(crt),
            "-CAkey", str(key), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
            "-out", str(self.root / "server.crt"))

    def stop(self) -> None:
        if self.service:
            self.service.stop()


def ensure_rootfs_tar() -> Path:
    """A cached tarball of a minimal Debian bookworm with python3 + venv + pip."""
    if ROOTFS_TAR.exists():
        return ROOTFS_TAR
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
                        "bookworm", str(rootfs)], check=True, capture_output=True)
        for cache_dir in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / cache_dir, ignore_errors=True)
        partial = ROOTFS_TAR.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(ROOTFS_TAR)
    return ROOTFS_TAR


def ensure_arm64_rootfs_tar() -> Path:
    """A cached tarball of a minimal Debian bookworm arm64 with python3 + venv, made without
    emulation: debootstrap's first stage, every .deb unpacked on the host, and by hand what
    the maintainer scripts that matter here do (accounts, CA bundle); no dpkg database. Its
    python3.11 debs are kept in ARM64_PYTHON_DEBS."""
    if ARM64_ROOTFS_TAR.exists() and ARM64_PYTHON_DEBS.is_dir():
        return ARM64_ROOTFS_TAR
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
                        f"--include={ARM64_PACKAGES}", "bookworm", str(rootfs)],
                       check=True, capture_output=True)
        debs = Path(tmp) / "python-debs"
        debs.mkdir()
        for deb in sorted((rootfs / "var/cache/apt/archives").glob("*.deb")):
            if re.match(r"(lib)?python3\.11[-_]", deb.name):
                shutil.copy(deb, debs / deb.name)
            # Not `dpkg-deb -x`: its tar replaces the merged-/usr links (/bin, /lib) by dirs.
            data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                  check=True, capture_output=True).stdout
            subprocess.run(["tar", "-C", str(rootfs), "--keep-directory-symlink",
                            "--numeric-owner", "-xf", "-"], input=data, check=True)
            deb.unlink()
        for name in ("passwd", "group"):  # base-passwd's postinst
            shutil.copy(rootfs / f"usr/share/base-passwd/{name}.master", rootfs / "etc" / name)
        shared = rootfs / "usr/share/ca-certificates"  # ca-certificates' update-ca-certificates
        certs = sorted(shared.glob("*/*.crt"))
        (rootfs / "etc/ca-certificates.conf").write_text(
            "".join(f"{cert.relative_to(shared)}\n" for cert in certs))
        (rootfs / "etc/ssl/certs/ca-certificates.crt").write_text(
            "".join(cert.read_text() for cert in certs))
        if not os.path.lexists(rootfs / "usr/bin/python3"):
            (rootfs / "usr/bin/python3").symlink_to("python3.11")
        for leftover in ("debootstrap", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / leftover, ignore_errors=True)
        for mount_point in ("proc", "sys"):  # the first stage links /proc to the host's
            path = rootfs / mount_point
            if path.is_symlink():
                path.unlink()
            path.mkdir(mode=0o755, exist_ok=True)
        partial = ARM64_ROOTFS_TAR.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        shutil.rmtree(ARM64_PYTHON_DEBS, ignore_errors=True)
        debs.rename(ARM64_PYTHON_DEBS)
        partial.rename(ARM64_ROOTFS_TAR)
    return ARM64_ROOTFS_TAR


def arm64_python_debs() -> Path:
    """The directory of Debian's arm64 python3.11 debs, kept from the arm64 rootfs's
    debootstrap (which checks them against the signed release)."""
    ensure_arm64_rootfs_tar()
    return ARM64_PYTHON_DEBS


def buildah_env(root: Path) -> dict[str, str]:
    """Environment for Debian's buildah with private storage under ``root``: overlay where
    the kernel lets us mount one (as dockerd's), else vfs."""
    storage = root / "containers"
    storage.mkdir(exist_ok=True)
    driver = "overlay" if storage_driver(storage) == "overlay2" else "vfs"
    conf = storage / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "{driver}"\ngraphroot = "{storage}/graph"\n'
                    f'runroot = "{storage}/run"\n')
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "STORAGE_DRIVER": driver}


def base_reference(registry: Registry) -> str:
    """REGISTRY/library/python:3.11-slim: where ``push_base_image`` puts the local base."""
    return f"{registry.address}/{BASE_NAME}"


def push_base_image(engine: DockerEngine, registry: Registry) -> str:
    """Import the cached rootfs as REGISTRY/library/python:3.11-slim and push it."""
    reference = base_reference(registry)
    if engine.cli("image", "inspect", reference, check=False).returncode != 0:
        engine.cli("import", "--change", "CMD [\"python3\"]", "--change", f"ENV PATH={BASE_PATH}",
                   "--change", "ENV LANG=C.UTF-8", str(ensure_rootfs_tar()), reference)
    engine.cli("push", reference)
    return reference


BUILDAH_NAME = "local/buildah:debian"
BUILDAH_DOCKERFILE = """ARG BASE
FROM ${BASE}
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah \\
 && rm -rf /var/lib/apt/lists/*
"""


def push_buildah_image(engine: DockerEngine, registry: Registry) -> str:
    """An executor image with Debian's buildah (quay.io/buildah/stable is not reachable here):
    REGISTRY/local/buildah:debian, made on the local base."""
    reference = f"{registry.address}/{BUILDAH_NAME}"
    if engine.cli("image", "inspect", reference, check=False).returncode != 0:
        with tempfile.TemporaryDirectory(prefix="mls-buildah-") as tmp:
            (Path(tmp) / "Dockerfile").write_text(BUILDAH_DOCKERFILE)
            engine.cli("build", "--network", "host", "-t", reference, "--build-arg",
                       f"BASE={push_base_image(engine, registry)}", tmp, timeout=600)
    engine.cli("push", reference)
    return reference


STACK_DIR = CACHE / "stack"
STACK_REGISTRY_PORT = 5055


@contextlib.contextmanager
def local_stack():
    """Engine + registry for the demo and `make images`, data kept under ~/.cache.

    Uses DOCKER_HOST when an engine answers there; otherwise starts dockerd on a private
    socket. The registry listens on 127.0.0.1:5055 (or a free port) so image references,
    and hence environment tags, stay stable across runs. Everything started is stopped.
    """
    started: list[DockerEngine | Registry] = []
    try:
        engine = DockerEngine(STACK_DIR / "docker")
        host = os.environ.get("DOCKER_HOST", "")
        if host.startswith("unix://") and subprocess.run(
                [docker_cli(), "version"], capture_output=True, check=False).returncode == 0:
            engine = DockerEngine(STACK_DIR, socket_path=Path(host.removeprefix("unix://")))
        else:
            started.append(engine.start())
        port = STACK_REGISTRY_PORT if _port_free(STACK_REGISTRY_PORT) else 0
        registry = Registry(STACK_DIR / "registry", port=port)
        started.append(registry.start())
        yield engine, registry
    finally:
        for service in reversed(started):
            service.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0
