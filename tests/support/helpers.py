"""Helpers shared by test modules (importable as `helpers`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import click
from click.testing import CliRunner

from mlflow_steps.cli import main as entry
from mlflow_steps.env.hashing import template_version

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sklearn-logreg"
# Two iris rows the example's model classifies as [0, 2].
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
MINIMAL_MLPROJECT = "name: demo\nentry_points:\n  main:\n    command: python train.py\n"


def write_codeset(root: Path, files: dict[str, str | bytes]) -> Path:
    """Create a codeset from {relative path: content}."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def small_codeset(directory: Path) -> Path:
    """One small pinned requirement (six) in ``directory``/small: an image of the tooling and
    six, a fraction of the example's build, where the example's content is not the point."""
    return write_codeset(directory / "small", {"MLproject": MINIMAL_MLPROJECT,
                                               "requirements.txt": "six==1.16.0\n"})


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 900, process: bool = False) -> subprocess.CompletedProcess[str]:
    """`mlflow-steps ARGS` through its console entry point, with ``env`` as the whole
    environment (default: this one) and ``cwd``: in this process under click's CliRunner, or
    with ``process`` in a child of its own, for what only a process shows: signals, the
    `python -m` entry, what a command leaves in its process or does on its way out, a command
    that replaces its process (`server serve` execs the MLflow server). Past ``timeout``
    seconds: subprocess.TimeoutExpired, either way."""
    argv = [sys.executable, "-m", "mlflow_steps", *args]
    if process:
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=timeout, check=False)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_cli runs in-process in the main thread only (it swaps the "
                           "process's environment, streams and signals): pass process=True")
    try:
        with _like_a_child(env, cwd), _alarm(timeout):
            # fd capture: what child processes (engines, uv, the project) write is output too
            result = CliRunner(capture="fd").invoke(_ENTRY, list(args), prog_name="mlflow-steps")
    except _TimedOut:
        raise subprocess.TimeoutExpired(argv, timeout) from None
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # as the interpreter
    return subprocess.CompletedProcess(argv, result.exit_code, result.stdout, stderr)


class _ConsoleEntry(click.Command):
    """CliRunner calls a command's ``main``: this one is the console entry point's (one-line
    failures, exit codes), not the bare click group's."""

    def main(self, args: list[str], prog_name: str | None = None, **_: object) -> None:
        entry.main(list(args))


_ENTRY = _ConsoleEntry("mlflow-steps")
# The warning filters of a fresh interpreter (pytest's own would hide what a user sees).
_PYTHON_WARNINGS = (("ignore", ResourceWarning), ("ignore", ImportWarning),
                    ("ignore", PendingDeprecationWarning), ("ignore", DeprecationWarning))


class _TimedOut(BaseException):
    """The in-process command ran past its timeout (a BaseException: the entry point's
    one-line failure handling does not catch it)."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """_TimedOut raised in the main thread after ``seconds``."""

    def expire(_signum: int, _frame: object) -> None:
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _like_a_child(env: dict[str, str] | None, cwd: Path | None) -> Iterator[None]:
    """What a child process would start with and this one gets back after: ``env`` as all of
    os.environ (CliRunner's env only overlays), the working directory, the SIGTERM/SIGINT
    handlers, Python's warnings printed on stderr, no MLflow tracking URI set in-process (`run`
    sets MLflow's global one), and the tooling digest computed afresh (cached per process)."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    tracking_uri = _mlflow_tracking_uri(None)  # (MLflow unsets its variable: set again below)
    os.environ.clear()
    os.environ.update(saved_env if env is None else env)
    template_version.cache_clear()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category in _PYTHON_WARNINGS:
                warnings.simplefilter(action, category)
            warnings.showwarning = _print_warning
            yield
    finally:
        _mlflow_tracking_uri(tracking_uri)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _print_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   file: object = None, line: str | None = None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _mlflow_tracking_uri(uri: str | None) -> str | None:
    """Set MLflow's in-process tracking URI (if MLflow is loaded); the one it replaced."""
    if "mlflow" not in sys.modules:
        return None
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous = utils._tracking_uri
    if previous != uri:
        mlflow.set_tracking_uri(uri)
    return previous


def push_tiny_image(base_url: str, repository: str, tag: str, *, auth=None, verify=True,
                    headers: dict[str, str] | None = None, config: bytes = b"{}",
                    layers: tuple[bytes, ...] = ()) -> str:
    """Upload a minimal OCI image over the registry API: ``config`` and ``layers`` as given
    (default: an empty config, no layers); the manifest's digest."""
    import hashlib
    import json

    import requests

    kwargs = {"auth": auth, "verify": verify, "headers": dict(headers or {}), "timeout": 10}

    def upload(blob: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        response = requests.post(f"{base_url}/v2/{repository}/blobs/uploads/", **kwargs)
        assert response.status_code == 202, response.text
        location = response.headers["Location"]
        location = location if location.startswith("http") else base_url + location
        separator = "&" if "?" in location else "?"
        response = requests.put(f"{location}{separator}digest={digest}", data=blob, **{
            **kwargs, "headers": {**kwargs["headers"],
                                  "Content-Type": "application/octet-stream"}})
        assert response.status_code == 201, response.text
        return digest

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": upload(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": upload(layer), "size": len(layer)} for layer in layers]}).encode()
    response = requests.put(f"{base_url}/v2/{repository}/manifests/{tag}", data=manifest, **{
        **kwargs, "headers": {**kwargs["headers"],
                              "Content-Type": "application/vnd.oci.image.manifest.v1+json"}})
    assert response.status_code == 201, response.text
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def pushed_image(client, reference: str) -> tuple[str, str, dict, dict]:
    """``reference`` (registry/repository:tag) as pushed, read with ``client`` (a
    RegistryClient of that registry): repository, manifest digest, manifest, config."""
    import json

    repository, tag = reference.split("/", 1)[1].rsplit(":", 1)
    digest, manifest = client.manifest(repository, tag)
    config = json.loads(client.blob(repository, manifest["config"]["digest"], 1 << 20))
    return repository, digest, manifest, config


def make_wheel(directory: Path, name: str, version: str, files: dict[str, bytes],
               tag: str = "py3-none-any") -> Path:
    """A wheel of ``files`` (with METADATA, WHEEL and RECORD) for platform ``tag``."""
    import zipfile

    from mlflow_steps.build.image_plan import record_hash

    info = f"{name}-{version}.dist-info"
    files = {**files,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
             .encode(),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: "
             f"{'true' if tag.endswith('-any') else 'false'}\nTag: {tag}\n".encode()}
    record = [f"{path},{record_hash(data)},{len(data)}" for path, data in files.items()]
    record.append(f"{info}/RECORD,,")
    wheel = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def tiny_wheel(directory: Path, name: str = "tiny_conda_probe", version: str = "1.0") -> Path:
    """A pure wheel made here (module ``name`` with VALUE = 42), installable without an
    index."""
    return make_wheel(directory, name, version, {f"{name}.py": b"VALUE = 42\n"})


def basic(user: str, password: str) -> str:
    """The ``auth`` value of a docker config.json entry."""
    import base64

    return base64.b64encode(f"{user}:{password}".encode()).decode()


def docker_config(directory: Path, auths: dict[str, dict[str, str]], **extra) -> Path:
    """Write a Docker config.json and return its directory (the DOCKER_CONFIG value)."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"auths": auths, **extra}))
    return directory


def predictions(url: str) -> list[int]:
    """POST the iris rows to an MLflow scoring server's /invocations URL."""
    import requests

    answer = requests.post(url, json={"inputs": IRIS_ROWS}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]
