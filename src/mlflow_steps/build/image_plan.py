"""The image to build, in memory: made once per build from the EnvSpec (``image_plan``), then
rendered as a Dockerfile build context (``build.dockerfile``) or laid out as layers by the
engine-free builder (``build.direct``).

It holds the runtime image contract: the base, how the environment gets into ``/opt/env``
(strategy and the normalised files it installs from), the step tooling, the runtime user
and workdir, the env vars, the labels, the command and the record files (env files, lock,
SBOM) under ``/opt/mlflow-steps-build``.
"""

from __future__ import annotations

import base64
import calendar
import fnmatch
import hashlib
import os
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import yaml
from packaging.utils import canonicalize_name

from mlflow_steps import __version__
from mlflow_steps.env.hashing import PACKAGE_DIR, env_tag, spec_digest, tooling_files
from mlflow_steps.env.pylock import LockedPackage
from mlflow_steps.env.spec import EnvSpec

BUILD_DIR = "/opt/mlflow-steps-build"  # the record; a Dockerfile build mounts its inputs here
ENV_DIR = f"{BUILD_DIR}/env"  # the normalised env files (installed from, then recorded)
ENV_PREFIX = "/opt/env"
LOCK_PATH = f"{BUILD_DIR}/lock.txt"  # what was installed (name==version), written at build
SBOM_PATH = f"{BUILD_DIR}/sbom.cdx.json"  # CycloneDX JSON of the environment
PYLOCK_PATH = f"{BUILD_DIR}/pylock.toml"  # PEP 751: what was installed, as uv writes it
TOOLING_PREFIX = "/opt/mlflow-steps"
# The standard Linux PATH (Docker's, BuildKit's): what a base whose config sets none has.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Owned by the runtime user in the image itself; never the codeset mount (/project), which
# only exists when a step runs, nor any path a builder uses.
WORKDIR = "/srv/mlflow"
CODESET_PATH = "/project"
RUNTIME_UID = 1000
RUNTIME_NAME = "mlflow"
# What `mlflow-steps run` needs in a runtime image (rendering, and so jinja2, is not run there).
TOOLING_REQUIREMENTS = (
    "click>=8.1",
    "packaging>=23",
    "pyyaml>=6",
    "requests>=2.31",
    "urllib3>=2",  # the registry client (image records) speaks urllib3 2's API
    "certifi",
    "mlflow-skinny>=2.10,<4",
    "boto3>=1.28",  # S3 artifact stores: the step checks the model the run logged there
)
TOOLING_DIST = "mlflow-steps"
TOOLING_WHEEL = f"mlflow_steps-{__version__}-py3-none-any.whl"
WHEEL_DATE = (1980, 1, 1, 0, 0, 0)  # zip's earliest: the wheel's bytes depend on content only
# The CUDA runtime's wheels (what PyTorch, JAX and RAPIDS pull in from PyPI, hundreds of MB
# each): the large ones by name (`nvidia-cublas`, `nvidia-cublas-cu12`...; cusparselt before
# cusparse, a package goes to the first group it matches), then the small rest together.
CUDA_LAYERS = (*((f"nvidia-{library}*",) for library in (
    "cudnn", "cublas", "nccl", "cusparselt", "cusparse", "cufft", "cusolver", "nvshmem")),
    ("nvidia-*",))
# Packages installed as layers of their own (in this order, the most stable first, before
# the rest) when the environment has them: large, and rarely what a one-line requirements
# change touches. Names, or glob patterns over normalised names; a package goes to the first
# group that matches it. The Dockerfile installs each group in a RUN of its own; the direct
# builder makes each a layer, and any other distribution past --own-layer-mb too.
OWN_LAYERS = (*CUDA_LAYERS, ("triton",), ("torch",), ("numpy",), ("scipy",), ("pandas",),
              ("scikit-learn",), ("pyarrow",), ("botocore", "boto3", "s3transfer"),
              ("mlflow", "mlflow-skinny"))
# Set from the first step of every runtime image on.
BUILD_ENV = {"PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
             "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
             "GIT_PYTHON_REFRESH": "quiet"}
IMAGE_COMMAND = (f"{TOOLING_PREFIX}/bin/mlflow-steps", "run", CODESET_PATH)
CONDA_STRATEGIES = ("conda", "conda-lock")


@dataclass(frozen=True)
class EnvironmentInstall:
    """How the environment gets into ``ENV_PREFIX``: its strategy and what it installs from
    (the spec's pip and conda parts, normalised; ``files`` renders them)."""

    strategy: str  # pip | conda | conda-lock
    source: str  # the codeset's env file, for messages ("" for a docker_env image)
    python: str | None
    pip_options: tuple[str, ...]  # index, find-links and option lines
    constraints: tuple[str, ...]
    requirements: tuple[str, ...]  # the codeset's
    local_wheels: tuple[str, ...]  # the codeset's local files, by name (in env/wheels)
    added_requirements: tuple[str, ...]  # what every environment gets (mlflow, boto3)
    wheel_files: Mapping[str, Path]  # local file name -> the file on the builder
    build_requirements: tuple[str, ...]
    conda_channels: tuple[str, ...] = ()
    conda_dependencies: tuple[str, ...] = ()
    locked_conda: tuple[Mapping[str, str], ...] = ()
    locked_pip: tuple[Mapping[str, str], ...] = ()
    # several platforms: each one's locked packages (``for_platform`` picks them)
    locked_pip_by_platform: Mapping[str, tuple[Mapping[str, str], ...]] = field(
        default_factory=dict)
    locked_conda_by_platform: Mapping[str, tuple[Mapping[str, str], ...]] = field(
        default_factory=dict)
    own_layers: tuple[tuple[str, ...], ...] = OWN_LAYERS

    def for_platform(self, platform: str) -> EnvironmentInstall:
        """What is installed for ``platform``: the lock's selection for its CPU (conda
        packages: its subdir's), and the constraints a pip lock puts on what is added to
        it."""
        if platform not in self.locked_pip_by_platform:
            return self
        locked = self.locked_pip_by_platform[platform]
        constraints = lock_constraints(locked) if self.strategy == "pip" else self.constraints
        return replace(self, locked_pip=locked, constraints=constraints,
                       locked_conda=self.locked_conda_by_platform.get(platform,
                                                                      self.locked_conda),
                       locked_pip_by_platform={}, locked_conda_by_platform={})

    @property
    def locked(self) -> bool:
        """A pip environment from a lock (pylock.toml, uv.lock): its packages installed as
        locked, without dependencies, nothing resolved but what is added to it."""
        return self.strategy == "pip" and bool(self.locked_pip)

    def locked_requirements(self, env_dir: str) -> list[str]:
        """The lock's requirement lines (pinned, hash-checked), sorted by name; its local
        wheels named where ``env_dir`` is."""
        return [LockedPackage(**package).requirement(env_dir) for package in self.locked_pip]

    def locked_layers(self, env_dir: str) -> list[list[str]]:
        """The lock's requirement lines per ``own_layers`` group, then the rest: the layers
        an engine installs them in (as the resolve stage splits resolved pins); local wheels
        in the rest, whose step has the env files (``env_dir``)."""
        layers: list[list[str]] = [[] for _ in range(len(self.own_layers) + 1)]
        for package, line in zip(self.locked_pip, self.locked_requirements(env_dir),
                                 strict=True):
            group = None if package.get("path") else self.own_layer_of(package["name"])
            layers[len(self.own_layers) if group is None else group].append(line)
        return layers

    def own_layer_of(self, name: str) -> int | None:
        """The index of the first ``own_layers`` group matching distribution ``name``."""
        name = canonicalize_name(name)
        return next((index for index, group in enumerate(self.own_layers)
                     if any(fnmatch.fnmatchcase(name, pattern) for pattern in group)), None)

    def requirements_text(self, env_dir: str) -> str:
        """requirements.txt, naming the constraints and local files where ``env_dir`` is."""
        lines = list(self.pip_options)
        if self.constraints:
            lines.append(f"-c {env_dir}/constraints.txt")
        lines += self.requirements
        lines += [f"{env_dir}/wheels/{name}" for name in self.local_wheels]
        lines += self.added_requirements
        return "\n".join(lines) + "\n"

    def files(self, env_dir: str) -> dict[str, str]:
        """The env files by name, naming ``env_dir`` as where they are (the image records
        them in its ``record.env_dir``); the local files come beside them, in wheels/."""
        files = {"requirements.txt": self.requirements_text(env_dir)}
        if self.constraints:
            files["constraints.txt"] = "\n".join(self.constraints) + "\n"
        if self.build_requirements:
            files["build-requirements.txt"] = "\n".join(sorted(self.build_requirements)) + "\n"
        if self.strategy == "conda":
            environment = {"channels": list(self.conda_channels),
                           "dependencies": sorted(self.conda_dependencies)}
            if "pip" not in {d.split(" ")[0] for d in self.conda_dependencies}:
                environment["dependencies"].append("pip")
            files["environment.yml"] = yaml.safe_dump(environment, sort_keys=False)
        if self.locked:
            files["requirements.lock.txt"] = "".join(
                line + "\n" for line in self.locked_requirements(env_dir))
        if self.strategy == "conda-lock":
            urls = [f"{p['url']}#{p['md5']}" if p.get("md5") else p["url"]
                    for p in self.locked_conda]
            files["conda-explicit.txt"] = "@EXPLICIT\n" + "\n".join(urls) + "\n"
            if self.locked_pip:
                files["requirements.lock.txt"] = "".join(
                    f"{p['name']} @ {p['url']}"
                    + (f" --hash=sha256:{p['sha256']}" if p.get("sha256") else "") + "\n"
                    for p in self.locked_pip)
        return files

    def write(self, directory: Path, env_dir: str, mkdir_parents: bool = False) -> Path:
        """The env files and wheels/ into ``directory`` (new), naming ``env_dir``."""
        directory.mkdir(parents=mkdir_parents)
        for name, text in self.files(env_dir).items():
            (directory / name).write_text(text)
        if self.wheel_files:
            (directory / "wheels").mkdir()
            for name, path in self.wheel_files.items():
                shutil.copyfile(path, directory / "wheels" / name)
        return directory


@dataclass(frozen=True)
class RuntimeUser:
    """Who runs steps: uid ``uid`` (added as ``name`` unless the base has that uid), in a
    workdir it owns."""

    uid: int = RUNTIME_UID
    name: str = RUNTIME_NAME
    workdir: str = WORKDIR


@dataclass(frozen=True)
class RecordFiles:
    """What the image records of its environment, for `inspect` and audits."""

    directory: str = BUILD_DIR
    env_dir: str = ENV_DIR  # the env files the environment was installed from
    lock: str = LOCK_PATH
    sbom: str = SBOM_PATH
    pylock: str = PYLOCK_PATH  # what pip installed (a conda image's conda part: the lock)


@dataclass(frozen=True)
class ImagePlan:
    """One runtime image, whichever builder makes it."""

    base_image: str
    tag: str
    spec_digest: str
    install: EnvironmentInstall
    tooling_wheel: str  # the step tooling, installed into the environment (or a venv of its
    tooling_prefix: str  # own at ``tooling_prefix``); bin/mlflow-steps is the command
    user: RuntimeUser
    env_prefix: str
    build_env: Mapping[str, str]  # set from the first step on
    runtime_env: Mapping[str, str]  # set last, as Docker's ENV (``${PATH:-...}``: the base's)
    labels: Mapping[str, str]
    command: tuple[str, ...]
    record: RecordFiles


def lock_constraints(locked: tuple[Mapping[str, str], ...]) -> tuple[str, ...]:
    """The versions a lock pins, as constraints on what is added to it."""
    return tuple(f"{p['name']}=={p['version']}" for p in locked if p.get("version"))


def image_plan(spec: EnvSpec) -> ImagePlan:
    """The plan of ``spec``'s runtime image."""
    pip, tag = spec.pip, env_tag(spec)
    options = [f"--index-url {pip['index_url']}"] if pip.get("index_url") else []
    options += [f"--extra-index-url {u}" for u in pip.get("extra_index_urls", [])]
    options += [f"--find-links {u}" for u in pip.get("find_links", [])]
    options += [opt.replace("=", " ", 1) for opt in pip.get("options", [])]
    constraints = tuple(pip.get("constraints", []))
    if spec.strategy == "pip" and spec.locked_pip:  # the lock binds what is added to it
        constraints = lock_constraints(spec.locked_pip)
    install = EnvironmentInstall(
        strategy=spec.strategy, source=spec.source, python=spec.python,
        pip_options=tuple(options), constraints=constraints,
        requirements=tuple(pip.get("requirements", [])),
        local_wheels=tuple(name for name, _ in pip.get("local_artifacts", [])),
        added_requirements=spec.added_requirements,
        wheel_files=MappingProxyType(dict(spec.local_files)),
        build_requirements=spec.build_requirements, conda_channels=spec.conda_channels,
        conda_dependencies=spec.conda_dependencies, locked_conda=spec.locked_conda,
        locked_pip=spec.locked_pip,
        locked_pip_by_platform=MappingProxyType(dict(spec.locked_pip_by_platform)),
        locked_conda_by_platform=MappingProxyType(dict(spec.locked_conda_by_platform)))
    record = RecordFiles()
    labels = {"org.opencontainers.image.title": "mlflow-steps runtime",
              "org.opencontainers.image.version": tag,
              "org.opencontainers.image.base.name": spec.base_image,
              "io.mlflow-steps.env-tag": tag,
              "io.mlflow-steps.spec-digest": spec_digest(spec),
              "io.mlflow-steps.strategy": spec.strategy,
              "io.mlflow-steps.tooling-version": __version__,
              "io.mlflow-steps.lock": record.lock,
              "io.mlflow-steps.sbom": record.sbom,
              "io.mlflow-steps.pylock": record.pylock}
    # the environment first, then the base's PATH, or the standard one when it sets none
    runtime_env = {"PATH": f"{ENV_PREFIX}/bin:${{PATH:-{DEFAULT_PATH}}}",
                   "MLFLOW_STEPS_ENV": ENV_PREFIX,
                   "MLFLOW_STEPS_ENV_TAG": tag}
    return ImagePlan(
        base_image=spec.base_image, tag=tag, spec_digest=labels["io.mlflow-steps.spec-digest"],
        install=install, tooling_wheel=TOOLING_WHEEL, tooling_prefix=TOOLING_PREFIX,
        user=RuntimeUser(), env_prefix=ENV_PREFIX, build_env=MappingProxyType(dict(BUILD_ENV)),
        runtime_env=MappingProxyType(runtime_env), labels=MappingProxyType(labels),
        command=IMAGE_COMMAND, record=record)


def requirements_text(spec: EnvSpec) -> str:
    """``spec``'s requirements.txt as the image has it."""
    return image_plan(spec).install.requirements_text(ENV_DIR)


def record_hash(data: bytes) -> str:
    """A wheel RECORD line's hash of ``data``."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def tooling_wheel_files() -> dict[str, bytes]:
    """The step tooling as a wheel's files: package sources, templates and metadata."""
    files = {f"mlflow_steps/{path.relative_to(PACKAGE_DIR).as_posix()}": path.read_bytes()
             for path in tooling_files()}
    info = f"mlflow_steps-{__version__}.dist-info"
    files[f"{info}/METADATA"] = "".join(
        ["Metadata-Version: 2.1\nName: mlflow-steps\n", f"Version: {__version__}\n",
         "Requires-Python: >=3.10\n", *(f"Requires-Dist: {r}\n" for r in TOOLING_REQUIREMENTS)]
    ).encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: mlflow-steps\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    files[f"{info}/entry_points.txt"] = (b"[console_scripts]\n"
                                         b"mlflow-steps = mlflow_steps.cli.main:main\n")
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n"
                     for name, data in sorted(files.items()))
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    return files


def write_tooling_wheel(directory: Path) -> Path:
    """Write the tooling wheel (no build backend needed to install it; same bytes for the
    same sources)."""
    path = directory / TOOLING_WHEEL
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in tooling_wheel_files().items():  # RECORD last
            entry = zipfile.ZipInfo(name, WHEEL_DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    stamp = calendar.timegm((*WHEEL_DATE, 0, 0, 0))
    os.utime(path, (stamp, stamp))  # uv records a local wheel's mtime in the environment
    return path
