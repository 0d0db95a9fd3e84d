"""Issue 28, point 3: an interrupted build leaves nothing behind. A real `mlflow-steps build`
gets a real SIGTERM or SIGINT while it is certainly in one phase (a loopback index or
registry holds the request the phase waits on, or a layer file is seen growing); it must exit
within 5 s with 128 + the signal, with no file holding the pip secret left in its temporary or
cache directories, no staging tree, no step output and none of its child processes alive."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import pytest
from support.faulty_proxy import HOLD_SECONDS
from support.helpers import MINIMAL_MLPROJECT, basic, docker_config, make_wheel, write_codeset
from support.hostile_registry import Action, Exchange, HostileRegistry
from support.synthetic_base import push_synthetic_base

from mlflow_steps.image.client import RegistryClient

PROBE = "mls-interrupt-probe"
BIG_FILE_BYTES = 160 << 20  # random: a few seconds of compression on any machine we use
PHASE_TIMEOUT = 600  # a cold uv cache downloads the step tooling's requirements first
EXIT_BOUND = 5.0  # issue 28: the process ends within 5 s of the signal
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
# A worker pool interrupted (graces of an hour: what is shown does not wait for them). With
# STALL, its one running task never returns; else it stops at its next check() and two more
# tasks are queued behind it. It prints its scratch directory, then the tasks cancelled.
POOL = """
import os, signal, sys, threading, time
from mlflow_steps.core import interrupt
interrupt.WORKERS_GRACE_SECONDS = interrupt.EXIT_DEADLINE_SECONDS = 3600
stall, running = sys.argv[1] == "STALL", threading.Event()
def task():
    running.set()
    while True:
        if not stall:
            interrupt.check()
        time.sleep(0.01)
try:
    with interrupt.interruptible(), interrupt.private_directory("pool-") as scratch:
        (scratch / "staged").write_text("a file")
        print(scratch, flush=True)
        with interrupt.ThreadPool(max_workers=1) as pool:
            futures = [pool.submit(task) for _ in range(1 if stall else 3)]
            running.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(3600)
except interrupt.Interrupted:
    print([future.cancelled() for future in futures], flush=True)
"""


# A worker pool whose one running task is held (no check()) while two more are queued: what
# the queued futures say at the signal, before the ``with`` block is left.
AT_THE_SIGNAL = """
import os, signal, threading, time
from mlflow_steps.core import interrupt
interrupt.WORKERS_GRACE_SECONDS = interrupt.EXIT_DEADLINE_SECONDS = 3600
running, release = threading.Event(), threading.Event()
def task():
    running.set()
    release.wait(60)
with interrupt.interruptible():
    try:
        with interrupt.ThreadPool(max_workers=1) as pool:
            futures = [pool.submit(task) for _ in range(3)]
            running.wait()
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(3600)
            except interrupt.Interrupted:
                print([future.cancelled() for future in futures], flush=True)
                release.set()
                raise
    except interrupt.Interrupted:
        pass
"""


class _Index(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        if server.hold and server.hold in self.path:  # type: ignore[attr-defined]
            server.held.set()  # type: ignore[attr-defined]
            server.released.wait(HOLD_SECONDS)  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):  # the build is gone by now
                self.send_error(503)
            return
        super().do_GET()


@contextlib.contextmanager
def index(root: Path, hold: str | None = None) -> Iterator[ThreadingHTTPServer]:
    """A PEP 503 index over ``root``/simple on 127.0.0.1; a GET whose path contains ``hold``
    sets ``.held`` and waits (bounded) for the test to end. ``.url`` is its address."""
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_Index, directory=str(root)))
    server.daemon_threads = True
    server.hold, server.held, server.released = (  # type: ignore[attr-defined]
        hold, threading.Event(), threading.Event())
    server.url = f"127.0.0.1:{server.server_address[1]}/simple/"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.released.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


def publish(root: Path, files: dict[str, bytes]) -> Path:
    """The probe package (a wheel of ``files``) in the index at ``root``."""
    project = root / "simple" / PROBE
    project.mkdir(parents=True, exist_ok=True)
    wheel = make_wheel(project, "mls_interrupt_probe", "1.0", files)
    (project / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    return root


def hold(entered: threading.Event) -> Action:
    """A hostile-registry action: note the request, keep it waiting until the server stops."""
    def act(exchange: Exchange) -> None:
        entered.set()
        exchange.server.released.wait(HOLD_SECONDS)
        with contextlib.suppress(OSError):
            exchange.send(503)

    return act


def hold_engine(entered: threading.Event) -> Action:
    """Hold what the engine asks (its User-Agent names docker or containerd); relay ours."""
    held = hold(entered)

    def act(exchange: Exchange) -> None:
        agent = (exchange.seen.header("User-Agent") or "").lower()
        if "docker" in agent or "containerd" in agent or "buildkit" in agent:
            held(exchange)
        else:
            exchange.send_upstream(exchange.relay())

    return act


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, start time, state) of ``pid``, None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[19], fields[0]


def descendants(pid: int) -> dict[int, tuple[str, str]]:
    """Every process below ``pid``: pid -> (start time, command name)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            children.setdefault(stat[0], []).append(int(entry.name))
    found: dict[int, tuple[str, str]] = {}
    pending = list(children.get(pid, []))
    while pending:
        current = pending.pop()
        stat = _stat(current)
        with contextlib.suppress(OSError):
            if stat:
                found[current] = (stat[1], Path(f"/proc/{current}/comm").read_text().strip())
        pending += children.get(current, [])
    return found


def still_running(processes: dict[int, tuple[str, str]]) -> list[str]:
    """Those of ``processes`` (same pid, same start time) that have not ended."""
    return [name for pid, (start, name) in processes.items()
            if (stat := _stat(pid)) and stat[1] == start and stat[2] not in "ZX"]


class Build:
    """A real `mlflow-steps build` subprocess (a session of its own), stderr followed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow_steps", "build", *args], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.stderr: list[str] = []
        self.stdout = ""
        self._readers = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self.stdout = self.process.stdout.read()

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        """Poll ``ready()`` until it holds; fail if the build ends or PHASE_TIMEOUT passes."""
        deadline = time.monotonic() + PHASE_TIMEOUT
        while not ready():
            if self.process.poll() is not None:
                for reader in self._readers:
                    reader.join(10)
                pytest.fail(f"the build ended (exit {self.process.returncode}) before "
                            f"{what}:\n{''.join(self.stderr[-30:])}")
            assert time.monotonic() < deadline, f"no {what} within {PHASE_TIMEOUT} s"
            time.sleep(0.01)

    def interrupt(self, signum: int) -> tuple[int, float, dict[int, tuple[str, str]]]:
        """Send ``signum``: exit code, seconds until the build ended, the processes it had
        started just before."""
        children = descendants(self.process.pid)
        os.kill(self.process.pid, signum)
        sent = time.monotonic()
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        elapsed = time.monotonic() - sent
        for reader in self._readers:
            reader.join(10)
        return code, elapsed, children


@pytest.fixture(scope="module")
def uv_cache(tmp_path_factory) -> Path:
    """One uv cache for this module's builds (the tooling's requirements downloaded once)."""
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture
def secret() -> str:
    return "SECRET-" + os.urandom(8).hex()


def build_env(tmp_path: Path, secret: str, index_url: str, base: dict[str, str],
              registries: list[str]) -> dict[str, str]:
    """``base`` without this machine's pip/uv settings, plus: a private index whose URL and
    CA bundle carry ``secret``, registry logins carrying it, private temp, cache and result
    directories."""
    ca = tmp_path / "ca.pem"
    ca.write_text(Path(certifi.where()).read_text() + f"\n# {secret}\n")
    for directory in ("tmp", "cache", "results", "out"):
        (tmp_path / directory).mkdir()
    logins = {host: {"auth": basic("mls", secret)} for host in registries}
    env = {key: value for key, value in base.items() if not key.startswith(("PIP_", "UV_"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_CERT": str(ca),
            "PIP_EXTRA_INDEX_URL": f"http://mls:{secret}@{index_url}",
            "DOCKER_CONFIG": str(docker_config(tmp_path / "docker", logins)),
            "TMPDIR": str(tmp_path / "tmp"), "MLFLOW_STEPS_CACHE": str(tmp_path / "cache"),
            "MLFLOW_STEPS_RESULTS_DIR": str(tmp_path / "results"),
            "TASK_RESULT": "image", "TASK_RESULT_DIGEST": "digest"}


def direct_env(tmp_path: Path, secret: str, index_url: str, uv_cache: Path,
               registries: list[str]) -> dict[str, str]:
    """``build_env`` on a machine without engines (this Python first on PATH, to stage
    with)."""
    env = build_env(tmp_path, secret, index_url, dict(os.environ), registries)
    return {**env, "UV_CACHE_DIR": str(uv_cache),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def outputs(tmp_path: Path) -> list[str]:
    return ["--output-file", str(tmp_path / "out" / "image"),
            "--digest-file", str(tmp_path / "out" / "digest")]


def assert_left_nothing(build: Build, tmp_path: Path, secret: str, signum: int,
                        result: tuple[int, float, dict[int, tuple[str, str]]]) -> None:
    code, elapsed, children = result
    assert code == 128 + signum, f"exit {code}:\n{''.join(build.stderr[-30:])}"
    assert elapsed < EXIT_BOUND, f"{elapsed:.1f} s after the signal"
    assert not still_running(children), f"still running: {still_running(children)}"
    assert build.stdout == "" and "Traceback" not in "".join(build.stderr)
    assert build.stderr[-1].strip() == f"mlflow-steps: interrupted by {signal.Signals(signum).name}"
    assert not list((tmp_path / "out").iterdir()) and not any((tmp_path / "results").iterdir())
    assert not list((tmp_path / "tmp").iterdir())  # secrets, build context: all gone
    work = tmp_path / "cache" / "work"
    assert not work.exists() or not list(work.iterdir())  # the staging tree
    holding = [str(path) for top in ("tmp", "cache") for path in (tmp_path / top).rglob("*")
               if path.is_file() and secret.encode() in path.read_bytes()]
    assert holding == []


@pytest.fixture(scope="module")
def synthetic_python(registry, tmp_path_factory) -> str:
    """A synthetic python 3.11 base in the test registry: repository/tag."""
    base = push_synthetic_base(RegistryClient(registry.address),
                               tmp_path_factory.mktemp("synthetic-base"),
                               repository="interrupt/python")
    return base.split("/", 1)[1]


@pytest.mark.parametrize("name", SIGNALS)
def test_interrupted_while_staging(name: str, registry, synthetic_python, uv_cache, codeset,
                                   secret: str, tmp_path: Path) -> None:
    """uv waits on the index (the probe's page is held): uv is stopped, nothing is left."""
    project = codeset({"requirements.txt": f"{PROBE}\nsix==1.16.0\n"})
    with index(publish(tmp_path / "index", {"mls_interrupt_probe.py": b""}),
               hold=f"/{PROBE}/") as server:
        env = direct_env(tmp_path, secret, server.url, uv_cache, [registry.address])
        build = Build([str(project), "--builder", "direct", "--registry", registry.address,
                       "--repository", "interrupt/staging", "--base-image",
                       f"{registry.address}/{synthetic_python}", *outputs(tmp_path)], env)
        build.wait_for(server.held.is_set, "uv asking the index for the probe")
        result = build.interrupt(SIGNALS[name])
    assert "uv" in {command for _, command in result[2].values()}, result[2]
    assert_left_nothing(build, tmp_path, secret, SIGNALS[name], result)


def test_an_interrupted_pool_waits_for_running_work_not_for_work_it_cancelled() -> None:
    """The running task stops at its check(): the pool is left at once, though the tasks it
    cancelled never ran (``wait`` used to count them as pending for the whole grace)."""
    result = subprocess.run([sys.executable, "-c", POOL, "CHECKS"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    scratch, cancelled = result.stdout.splitlines()
    assert cancelled == "[False, True, True]" and not Path(scratch).exists()


def test_queued_work_is_cancelled_at_the_signal_before_the_pool_is_left() -> None:
    """The signal cancels what is queued at once: a worker whose task ends then takes no
    queued task before the ``with`` block cancels it (a CI run saw all three run)."""
    result = subprocess.run([sys.executable, "-c", AT_THE_SIGNAL], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[False, True, True]"


def test_scratch_paths_go_at_the_signal_not_after_the_workers_grace() -> None:
    """While the pool still gives a stalled task its grace, the scratch directory is already
    removed (a staging tree takes seconds to remove on a busy machine); a second signal ends
    the process at once."""
    process = subprocess.Popen([sys.executable, "-c", POOL, "STALL"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        scratch = Path(process.stdout.readline().strip())
        deadline = time.monotonic() + 60
        while scratch.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not scratch.exists() and process.poll() is None  # gone, within the grace
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 128 + signal.SIGTERM
    finally:
        process.kill()
        process.communicate()


def _growing_layer(work: Path) -> Callable[[], bool]:
    """True once a layer file under ``work`` is seen growing past 8 MB (being compressed)."""
    sizes: dict[Path, int] = {}

    def ready() -> bool:
        for path in work.glob("direct-*/*/layer-*"):  # direct-*/<architecture>/
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                if sizes.get(path, size) < size and size > 8 << 20:
                    return True
                sizes[path] = size
        return False

    return ready


@pytest.mark.parametrize("name", SIGNALS)
def test_interrupted_while_compressing(name: str, registry, synthetic_python, uv_cache,
                                       codeset, warm_cache, secret: str, tmp_path: Path
                                       ) -> None:
    """A layer of a large random file is being compressed in a worker thread (the step
    tooling's layers are reused: the probe's is made first)."""
    project = codeset({"requirements.txt": f"{PROBE}\n"})
    big = {"mls_interrupt_probe/__init__.py": b"",
           "mls_interrupt_probe/noise.bin": os.urandom(BIG_FILE_BYTES)}
    with index(publish(tmp_path / "index", big)) as server:
        env = direct_env(tmp_path, secret, server.url, uv_cache, [registry.address])
        warm_cache(tmp_path / "cache")
        build = Build([str(project), "--builder", "direct", "--registry", registry.address,
                       "--repository", "interrupt/compressing", "--base-image",
                       f"{registry.address}/{synthetic_python}", "--force",
                       *outputs(tmp_path)], env)
        build.wait_for(_growing_layer(tmp_path / "cache" / "work"), "a layer being written")
        result = build.interrupt(SIGNALS[name])
    assert_left_nothing(build, tmp_path, secret, SIGNALS[name], result)


@pytest.mark.parametrize("name", SIGNALS)
def test_interrupted_while_pushing(name: str, registry, synthetic_python, uv_cache, codeset,
                                   secret: str, tmp_path: Path) -> None:
    """A worker thread's layer upload waits on the registry (its POST is held)."""
    project = codeset({"requirements.txt": f"{PROBE}\n"})
    entered = threading.Event()
    with index(publish(tmp_path / "index", {"mls_interrupt_probe.py": b""})) as server, \
            HostileRegistry(registry.url) as hostile:
        hostile.on("POST", r"/v2/interrupt/pushing/blobs/uploads/", hold(entered), times=None)
        env = direct_env(tmp_path, secret, server.url, uv_cache, [hostile.address])
        build = Build([str(project), "--builder", "direct", "--registry", hostile.address,
                       "--repository", "interrupt/pushing", "--base-image",
                       f"{hostile.address}/{synthetic_python}", "--force",
                       *outputs(tmp_path)], env)
        build.wait_for(entered.is_set, "a layer upload")
        result = build.interrupt(SIGNALS[name])
    assert_left_nothing(build, tmp_path, secret, SIGNALS[name], result)


@pytest.mark.parametrize("name", SIGNALS)
def test_interrupted_during_the_docker_build(name: str, docker_engine, registry, base_image,
                                             secret: str, tmp_path: Path) -> None:
    """`docker build` waits on the engine pulling the base (held): the docker client is
    stopped, the pip secrets it was given are gone."""
    project = write_codeset(tmp_path / "codeset", {"MLproject": MINIMAL_MLPROJECT,
                                                   "requirements.txt": f"{PROBE}\n"})
    entered = threading.Event()
    with index(publish(tmp_path / "index", {"mls_interrupt_probe.py": b""})) as server, \
            HostileRegistry(registry.url) as hostile:
        hostile.on("*", "", hold_engine(entered), times=None)
        env = build_env(tmp_path, secret, server.url, docker_engine.env(),
                        [hostile.address, registry.address])
        base = f"{hostile.address}/{base_image.split('/', 1)[1]}"
        build = Build([str(project), "--builder", "docker", "--registry", registry.address,
                       "--repository", "interrupt/docker", "--base-image", base, "--force",
                       *outputs(tmp_path)], env)
        build.wait_for(entered.is_set, "the engine pulling the base")
        result = build.interrupt(SIGNALS[name])
    assert any(command.startswith("docker") for _, command in result[2].values()), result[2]
    assert_left_nothing(build, tmp_path, secret, SIGNALS[name], result)
