"""Install the environment into a staging tree as it will be in the image (/opt/env), for the
base's platform, with uv and no build of any source distribution (a conda environment's
conda packages first, by rattler: ``conda_env``); then make the tree
position-independent of the staging path (interpreter, scripts, bytecode, recorded URLs) and
check it needs nothing the base lacks. Any doubt raises NotApplicable.

Nothing of the staged environment runs here: uv installs into it as a prefix of this machine's
interpreter (uv never starts the environment's own, whose ``site`` would run the packages'
``.pth`` files); the tooling check, the lock's input and the SBOM come from its metadata; the
interpreter runs here (probes, bytecode) start without ``site``, in the work directory, with a
scrubbed environment (``scrubbed_env``): no credential, registry or pip configuration."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow_steps.build.direct import NotApplicable
from mlflow_steps.build.direct.base_image import BaseFacts
from mlflow_steps.build.direct.conda_env import install_conda_packages
from mlflow_steps.build.direct.cuda import cuda_version, host_provided
from mlflow_steps.build.direct.elf import Libraries, environment_libraries
from mlflow_steps.build.direct.installed import (
    distributions,
    unmet_requirements,
)
from mlflow_steps.build.image_plan import (
    CONDA_STRATEGIES,
    ImagePlan,
    record_hash,
    write_tooling_wheel,
)
from mlflow_steps.core import interrupt
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact, secret_values
from mlflow_steps.core.retry import network_budget
from mlflow_steps.env.hashing import SOURCE_DATE_EPOCH
from mlflow_steps.env.installer import uv_binary
from mlflow_steps.env.pip_secrets import uv_process_env, uv_process_secrets
from mlflow_steps.env.pipconfig import BuildPipConfig
from mlflow_steps.image.layers import Entry
from mlflow_steps.image.platforms import MACHINES, environment_markers, machine

INSTALL_BUDGETS = 20  # an install downloads many files: this many network budgets
_VOLATILE = (".lock",)  # uv's own lock file in the venv
# What uv says of a distribution it would have to build (no wheel for the platform)
_NO_WHEEL = re.compile(r"Because (?P<name>[\w.-]+)\S* has no (?:usable wheels|wheels with a "
                       r"matching platform tag)|Distribution `(?P<dist>[\w.-]+)[^`]*` can't be "
                       r"installed because it is marked as `--no-build`")
# What an interpreter run here keeps of the build's environment (see scrubbed_env).
_KEPT = ("PATH", "LANG", "LANGUAGE", "TZ")


@dataclass(frozen=True)
class StagedEnv:
    """The staged environment: ``root`` holds opt/env, still run by ``python`` here (the
    image's interpreter and pyvenv.cfg are ``overrides``); its bytecode is compiled layer by
    layer (``bytecode.compile_bytecode``), its record written by ``record.write_record``."""

    plan: ImagePlan
    root: Path
    prefix: Path
    site_packages: Path
    python: str  # this machine's interpreter the environment is staged with (not its own)
    python_build: str  # what the bytecode depends on: the interpreter's version and build
    stager: Stager
    inputs: Path  # the plan's env files and tooling wheel, here for the record directory
    frozen: str  # `uv pip freeze` before local files' URLs were relocated
    work: Path  # the staging directory: HOME and cwd of the interpreters run here
    overrides: dict[str, Entry]  # image path (no leading /) -> what the image has there
    bundled: frozenset[str]  # every file name in the environment
    libraries: Libraries  # its ELF files' needs
    base_libraries: frozenset[str]
    staging_paths: tuple[str, ...]  # no file may name these
    cuda: str | None = None  # the CUDA version the wheels carry: the host mounts its driver

    @property
    def conda(self) -> bool:
        """Conda packages, their python the image's (conda-meta: part of the record)."""
        return self.plan.install.strategy in CONDA_STRATEGIES


def platform_tag(base: BaseFacts) -> str:
    """uv's --python-platform for the base (glibc only; others do not apply)."""
    if base.libc != "glibc" or not base.glibc_version:
        raise NotApplicable(f"the base's C library is {base.libc}, not a known glibc")
    if base.platform not in MACHINES:
        raise NotApplicable(f"the base's platform {base.platform} is not "
                            f"{' or '.join(MACHINES)}")
    return f"{machine(base.platform)}-manylinux_{base.glibc_version.replace('.', '_')}"


def scrubbed_env(environ: dict[str, str], work: Path) -> dict[str, str]:
    """The environment of an interpreter run here: PATH, locale and time zone of ``environ``,
    HOME in ``work``, the build's epoch and hash seed; no credential, no registry or pip
    configuration, no PYTHON* setting."""
    kept = {key: value for key, value in environ.items()
            if key in _KEPT or key.startswith("LC_")}
    return {**kept, "HOME": str(work), "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
            "PYTHONHASHSEED": "0"}


class Stager:
    """Runs uv with the build's pip settings; it installs with this machine's interpreter
    (``python``) into the environment as a prefix."""

    def __init__(self, python: str | None, base: BaseFacts, pip: BuildPipConfig,
                 environ: dict[str, str], work: Path, no_cache: bool = False,
                 conda_python: str | None = None) -> None:
        """``conda_python``: the version of the environment's own interpreter (a conda
        package's), else the base's python ``python`` (X.Y) runs the environment."""
        self.base = base
        self.platform = platform_tag(base)
        if conda_python:
            self.minor = ".".join(conda_python.split(".")[:2])
            self.version: str = conda_python
            self.interpreter = None
        else:
            self.minor = str(python or "")
            self.version = base.python_versions.get(self.minor, self.minor)
            self.interpreter = base.interpreters.get(self.minor)
            if self.interpreter is None:
                raise NotApplicable(f"the base has no python{self.minor} on its PATH")
        self.secrets = [*secret_values(environ), *uv_process_secrets(pip)]
        self.env = uv_process_env(pip, environ)
        # Hard links into uv's cache (a copy across filesystems): every file changed here is
        # replaced (``_replace``), never written in place.
        self.env.update(UV_LINK_MODE="hardlink", SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH),
                        PYTHONHASHSEED="0")
        if no_cache:  # a package cache of its own: every file downloaded again
            self.env["UV_CACHE_DIR"] = str(work / "uv-cache")
        self.timeout = network_budget(environ) * INSTALL_BUDGETS
        self.uv = str(uv_binary())
        self.work = work
        self.scrubbed = scrubbed_env(environ, work)
        self.python = self._host_python()

    def run(self, argv: list[str], what: str, *, fallback: bool = False,
            scrubbed: bool = False) -> str:
        """Run argv (``scrubbed``: an interpreter, with ``scrubbed_env`` in the work
        directory); its stdout. A failure is NotApplicable (``fallback``) or a StepError."""
        try:
            result = interrupt.run(argv, text=True,
                                   env=self.scrubbed if scrubbed else self.env,
                                   cwd=self.work if scrubbed else None, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise StepError(f"{what} took over {self.timeout:g} s", source="direct") from None
        if result.returncode != 0:
            lines = [x.strip() for x in result.stderr.splitlines() if x.strip()]
            problem = redact(" ".join(lines[-4:]), self.secrets)[-500:]
            if unbuilt := _NO_WHEEL.search(result.stderr):
                raise NotApplicable(f"{what}: {unbuilt['name'] or unbuilt['dist']} has no wheel "
                                    f"for linux/{self.base.architecture} (building one would "
                                    f"run its code)")
            if fallback:
                raise NotApplicable(f"{what}: {problem}")
            raise StepError(f"{what} failed: {problem}", source="direct")
        return result.stdout

    def _host_python(self) -> str:
        """A CPython of the environment's minor version here, to stage and compile with (its
        sys.executable: what uv names atop the scripts it installs)."""
        try:
            found = self.run([self.uv, "python", "find", "--no-project", self.minor],
                             "finding python", fallback=True).strip()
        except NotApplicable:
            raise NotApplicable(f"no python{self.minor} here to stage the environment with"
                                ) from None
        probe = self.run([found, "-S", "-c", "import sys; print(sys.implementation.name); "
                          "print(sys.executable)"], "probing python", fallback=True,
                         scrubbed=True).splitlines()
        if probe[:1] != ["cpython"] or len(probe) != 2:
            raise NotApplicable(f"{found} is {' '.join(probe[:1])}, not CPython")
        return probe[1]

    def pip(self, prefix: Path, *args: str, what: str, fallback: bool = True) -> str:
        """``uv pip`` on the environment at ``prefix`` as a prefix of this machine's
        interpreter: uv never starts the environment's interpreter."""
        return self.run([self.uv, "pip", *args, "--python", self.python, "--prefix",
                         str(prefix)], what, fallback=fallback)

    def targeted(self) -> list[str]:
        return ["--python-platform", self.platform, "--python-version", self.version]


def stage(plan: ImagePlan, base: BaseFacts, pip: BuildPipConfig, environ: dict[str, str],
          work: Path, no_cache: bool = False, conda_channel_alias: str | None = None
          ) -> StagedEnv:
    """Install the plan's environment into ``work``/root as its prefix (``no_cache``: with a
    package cache of its own, every file downloaded again): a venv on the base's python, or
    the conda packages (rattler, for the base's platform) with the pip part on top. Its env
    files and the tooling wheel are written to ``work``/inputs, which stands for the record
    directory (where a Dockerfile build mounts them): what uv records of their paths names
    that directory."""
    plan = replace(plan, install=plan.install.for_platform(base.platform))
    install = plan.install
    root = work / "root"
    prefix = root / plan.env_prefix.lstrip("/")
    conda_python = None
    if install.strategy in CONDA_STRATEGIES:
        conda_python = install_conda_packages(plan, prefix, base.platform, environ,
                                              conda_channel_alias)
    stager = Stager(install.python, base, pip, environ, work, no_cache, conda_python)
    python = stager.python
    inputs = work / "inputs"
    env_dir = install.write(inputs / "env", str(inputs / "env"), mkdir_parents=True)
    (inputs / "tooling").mkdir()
    tooling = write_tooling_wheel(inputs / "tooling")
    if not conda_python:
        stager.run([stager.uv, "venv", "--quiet", "--relocatable", "--python", python,
                    str(prefix)], "creating the environment")
    flags = ["--quiet", "--no-build", *stager.targeted()]
    if install.build_requirements:
        stager.pip(prefix, "install", *flags, "-r", str(env_dir / "build-requirements.txt"),
                   what="installing the build requirements without building any")
    if install.locked_pip:  # exactly the lock: no dependency resolved, hashes checked
        stager.pip(prefix, "install", *flags, "--no-deps", "-r",
                   str(env_dir / "requirements.lock.txt"),
                   what="installing the locked packages without building any")
    if not install.locked or install.added_requirements:
        stager.pip(prefix, "install", *flags, "-r", str(env_dir / "requirements.txt"),
                   what="installing the requirements without building any")
    stager.pip(prefix, "install", "--quiet", "--no-deps", *stager.targeted(), str(tooling),
               what="installing the step tooling")
    site = next(prefix.glob("lib/python*/site-packages"))
    installed = distributions(site)
    unmet = unmet_requirements(installed, environment_markers(stager.version,
                                                              machine(base.platform)))
    if unmet:
        raise NotApplicable(f"the environment does not satisfy the step tooling "
                            f"({'; '.join(unmet[:3])})")
    _drop_install_times(site)
    _strip_tests(site)
    frozen = stager.pip(prefix, "freeze", "--quiet", what="listing the environment",
                        fallback=False)
    _relocate_direct_urls(prefix, str(inputs), plan.record.directory)
    _rewrite_scripts(prefix, python, plan.env_prefix)
    build = stager.run([python, "-S", "-c", "import sys; print(sys.version, sys.implementation."
                        "cache_tag)"], "probing python", scrubbed=True).strip()
    bundled = frozenset(name for _, directories, files in os.walk(prefix)
                        for name in (*directories, *files))
    overrides = {} if conda_python else _image_interpreter(root, prefix, stager)
    return StagedEnv(plan, root, prefix, site, python, build, stager, inputs, frozen, work,
                     overrides, bundled, environment_libraries(prefix), base.libraries,
                     (str(work),), cuda_version(installed))


def check_files(staged: StagedEnv, paths: list[Path]) -> dict[str, str]:
    """NotApplicable when one of ``paths`` still names a staging path, or needs a shared
    library that neither the environment nor the base provides (run per layer, in
    parallel). With CUDA wheels, the driver's libraries count as provided: the NVIDIA
    container toolkit mounts them from the host. Returned: what plugins loaded only on
    demand need and the image lacks (library → the plugin)."""
    problem = leaked_paths(staged.root, paths, staged.staging_paths)
    if problem:
        raise NotApplicable(problem)
    missing, optional = staged.libraries.unmet(
        paths, staged.bundled | staged.base_libraries, staged.prefix)
    missing = {library: user for library, user in missing.items()
               if not (staged.cuda and host_provided(library))}
    if missing:
        shown = "; ".join(f"{lib} (needed by {user})"
                          for lib, user in sorted(missing.items())[:3])
        raise NotApplicable(f"shared libraries neither the environment nor the base "
                            f"provides: {shown}")
    return optional


def _drop_install_times(site: Path) -> None:
    """uv records when it installed a local wheel (uv_cache.json, a time): dropped with its
    RECORD line, as the Dockerfile path does."""
    for marker in site.glob("*.dist-info/uv_cache.json"):
        record = marker.parent / "RECORD"
        lines = record.read_text().splitlines(keepends=True)
        _replace(record, "".join(x for x in lines if not x.startswith(
            f"{marker.parent.name}/uv_cache.json,")).encode())
        marker.unlink()


def _replace(path: Path, data: bytes) -> None:
    """Give ``path`` new content as a new file (same mode): a hard link into uv's cache
    keeps the cached content."""
    fresh = path.with_name(path.name + ".mlflow-steps-new")
    fresh.write_bytes(data)
    fresh.chmod(path.stat().st_mode & 0o7777)
    fresh.replace(path)


def _strip_tests(site: Path) -> None:
    for tests in sorted(site.rglob("tests"), key=lambda p: len(p.parts)):
        if tests.is_dir() and not tests.is_symlink() and tests.exists():
            shutil.rmtree(tests)


def _relocate_direct_urls(prefix: Path, inputs: str, record_dir: str) -> None:
    """Local files were installed from ``inputs``: their recorded URL (and its RECORD line)
    names ``record_dir``, where a Dockerfile build mounts them, instead."""
    for direct_url in prefix.glob("lib/python*/site-packages/*.dist-info/direct_url.json"):
        data = direct_url.read_bytes().replace(inputs.encode(), record_dir.encode())
        _replace(direct_url, data)
        entry = f"{direct_url.parent.name}/{direct_url.name},"
        record = direct_url.parent / "RECORD"
        _replace(record, "".join(
            f"{entry}{record_hash(data)},{len(data)}\n" if line.startswith(entry) else line
            for line in record.read_text().splitlines(keepends=True)).encode())


def _image_interpreter(root: Path, prefix: Path, stager: Stager) -> dict[str, Entry]:
    """In the image, bin/python is the base's interpreter and pyvenv.cfg says so."""
    interpreter = str(stager.interpreter)
    version = stager.version
    config = (f"home = {os.path.dirname(interpreter)}\nimplementation = CPython\n"
              f"version_info = {version}\ninclude-system-site-packages = false\n")
    for name in _VOLATILE:
        (prefix / name).unlink(missing_ok=True)
    relative = prefix.relative_to(root).as_posix()
    return {f"{relative}/bin/python": Entry(f"{relative}/bin/python", "symlink",
                                            target=interpreter, mode=0o777),
            f"{relative}/pyvenv.cfg": Entry(f"{relative}/pyvenv.cfg", "file",
                                            data=config.encode(), mode=0o644)}


def _rewrite_scripts(prefix: Path, python: str, env_prefix: str) -> None:
    """Entry point scripts (uv names the installing interpreter, ``python``) name the
    image's ``env_prefix``/bin/python, as the Dockerfile path's do (any other mention of
    ``python`` at the top, as in the /bin/sh form for a long path, is NotApplicable)."""
    installer = f"#!{python}\n".encode()
    for script in (prefix / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            data = script.read_bytes()
            if data.startswith(installer):
                _replace(script, f"#!{env_prefix}/bin/python\n".encode() + data[len(installer):])
            elif python.encode() in data[:1024]:
                raise NotApplicable(f"the script {script.name} names {python} in a form not "
                                    f"rewritten here")


def leaked_paths(root: Path, paths: list[Path], needles: tuple[str, ...]) -> str | None:
    """One of ``paths`` that still names a staging path (it would not work in the image).
    A file hard-linked from uv's cache is a wheel's file as published, made before any
    staging path existed: only the files written here are read."""
    encoded = [n.encode() for n in needles]
    for path in sorted(paths):
        status = path.lstat()
        if stat.S_ISLNK(status.st_mode):
            if any(os.readlink(path).startswith(n) for n in needles):
                return f"{path.relative_to(root)} links into the staging path"
        elif (stat.S_ISREG(status.st_mode) and status.st_nlink == 1
              and any(n in path.read_bytes() for n in encoded)):
            return f"{path.relative_to(root)} names the staging path"
    return None
