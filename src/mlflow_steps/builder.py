"""The builder step: env tag → registry check → render → build + push → verify → output."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow_steps.backends import select_backend
from mlflow_steps.backends.base import PIP_CA_SECRET, PIP_CONFIG_SECRET, Backend, BuildRequest
from mlflow_steps.envspec import BuildOptions, EnvSpec, resolve_env
from mlflow_steps.errors import StepError
from mlflow_steps.hashing import env_tag, template_version
from mlflow_steps.pipconfig import BuildPipConfig, collect_pip_config
from mlflow_steps.registry import ImageRef, RegistryClient, docker_config_dir
from mlflow_steps.render import PipConfigDelivery, write_context

FUSEML_REGISTRY = "registry.fuseml-registry"
FUSEML_PULL_REGISTRY = "127.0.0.1:30500"
DEFAULT_REPOSITORY = "mlflow/trainer"


@dataclass(frozen=True)
class BuilderInputs:
    """The builder step's inputs (FuseML names plus ours)."""

    registry: str | None = None
    pull_registry: str | None = None
    repository: str = DEFAULT_REPOSITORY
    builder: str = "auto"
    force: bool = False
    verbose: bool = False
    compressed_caching: bool = False
    cache_repo: str | None = None
    insecure_registries: tuple[str, ...] = ()
    registry_ca: Path | None = None
    forward_pip_config: bool = True
    options: BuildOptions = field(default_factory=BuildOptions)

    def push_registry(self) -> str:
        return self.registry or FUSEML_REGISTRY

    def pull_prefix(self) -> str:
        """pull_registry; empty means registry (FuseML's in-cluster default when neither)."""
        if self.pull_registry:
            return self.pull_registry
        return self.registry or FUSEML_PULL_REGISTRY


@dataclass(frozen=True)
class BuildOutcome:
    """What the step reports."""

    pull_reference: str
    digest: str
    built: bool
    backend: str | None


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the result."""
    print(f"mlflow-steps: {message}", file=sys.stderr, flush=True)


def _with_pip_config(inputs: BuilderInputs, pip: BuildPipConfig) -> BuildOptions:
    index, extras = pip.public_urls()
    return replace(inputs.options, index_url=index, extra_index_urls=extras)


def _write_secrets(directory: Path, pip: BuildPipConfig, backend: Backend) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = directory / "pip.conf"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(pip.pip_conf(backend.ca_target() if pip.ca_bundle else None))
    secrets = {PIP_CONFIG_SECRET: config}
    if pip.ca_bundle:
        ca = directory / "pip-ca.pem"
        shutil.copyfile(pip.ca_bundle, ca)
        secrets[PIP_CA_SECRET] = ca
    return secrets


def run_builder(codeset: Path, inputs: BuilderInputs,
                environ: dict[str, str] | None = None) -> BuildOutcome:
    """Build and push the codeset's environment image unless the registry has it."""
    environ = dict(os.environ if environ is None else environ)
    pip = collect_pip_config(environ) if inputs.forward_pip_config else BuildPipConfig()
    _, spec = resolve_env(codeset, _with_pip_config(inputs, pip))
    tag = env_tag(spec)
    destination = ImageRef(inputs.push_registry(), inputs.repository, tag)
    pull_reference = f"{inputs.pull_prefix()}/{inputs.repository}:{tag}"
    if inputs.verbose:
        log(f"environment spec:\n{spec.explain(template_version())}")
        log(pip.describe())
    client = RegistryClient(
        destination.registry, insecure_registries=inputs.insecure_registries,
        verify=str(inputs.registry_ca) if inputs.registry_ca else True, environ=environ)
    if not inputs.force:
        digest = client.manifest_digest(destination.repository, tag)
        if digest:
            log(f"{destination} already exists ({digest}); build skipped")
            return BuildOutcome(pull_reference, digest, built=False, backend=None)
    backend = select_backend(inputs.builder, environ)
    log(f"building {destination} with {backend.name} ({spec.strategy}, base {spec.base_image})")
    _build(backend, spec, destination, inputs, pip, environ)
    digest = client.manifest_digest(destination.repository, tag)
    if not digest:
        raise StepError(f"{backend.name} reported success but {destination} is not in the "
                        "registry", source="push")
    log(f"pushed {destination} ({digest})")
    return BuildOutcome(pull_reference, digest, built=True, backend=backend.name)


def _build(backend: Backend, spec: EnvSpec, destination: ImageRef, inputs: BuilderInputs,
           pip: BuildPipConfig, environ: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="mlflow-steps-build-") as tmp:
        workspace = Path(tmp)
        delivery = (PipConfigDelivery() if pip.empty
                    else backend.delivery(with_ca=pip.ca_bundle is not None))
        context = write_context(spec, workspace / "context", delivery)
        secret_dir = backend.secret_dir(workspace)
        try:
            secrets = {} if pip.empty else _write_secrets(secret_dir, pip, backend)
            request = BuildRequest(
                context=context, destination=destination,
                base_image=ImageRef.parse(spec.base_image),
                docker_config=docker_config_dir(environ), secrets=secrets,
                insecure_registries=inputs.insecure_registries,
                registry_ca=inputs.registry_ca, compressed_caching=inputs.compressed_caching,
                cache_repo=inputs.cache_repo, verbose=inputs.verbose,
            )
            backend.build_and_push(request)
        finally:
            for name in ("pip.conf", "pip-ca.pem"):
                (secret_dir / name).unlink(missing_ok=True)
