"""The builder step: env tag → registry check → render → build + push → verify → output."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_steps.build.fuseml import (
    DEFAULT_REPOSITORY,
    FUSEML_PULL_REGISTRY,
    FUSEML_REGISTRY,
    OWN_LAYER_MB,
)
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.terminal import shown
from mlflow_steps.env.hashing import SOURCE_DATE_EPOCH, env_tag, template_version
from mlflow_steps.env.pip_secrets import run_mounts, write_secret_files
from mlflow_steps.env.pipconfig import BuildPipConfig, collect_pip_config
from mlflow_steps.env.spec import BuildOptions, EnvSpec, resolve_env
from mlflow_steps.image.client import RegistryClient, RegistryClients
from mlflow_steps.image.credentials import docker_config_dir
from mlflow_steps.image.platforms import DEFAULT_PLATFORMS
from mlflow_steps.image.reference import ImageRef, check_destination

if TYPE_CHECKING:
    from mlflow_steps.build.engines.engine import Backend, BuildRequest
    from mlflow_steps.build.image_plan import ImagePlan

# The skip decision (resolve_target, existing_digest) imports no engine, template or image
# code: functions that build import those when they run.


@dataclass(frozen=True)
class BuilderInputs:
    """The builder step's inputs (FuseML names plus ours)."""

    registry: str | None = None
    pull_registry: str | None = None
    repository: str = DEFAULT_REPOSITORY
    builder: str = "auto"
    compression: str = "gzip"  # of the direct builder's layers
    own_layer_mb: int = OWN_LAYER_MB  # the direct builder: a distribution this large, alone
    quiet: bool = False  # no progress shown
    force: bool = False
    verbose: bool = False
    compressed_caching: bool = False
    cache_repo: str | None = None
    reproducible: bool | None = None  # None: yes, except with Kaniko (its cost: README)
    check_reproducible: bool = False
    insecure_registries: tuple[str, ...] = ()
    conda_channel_alias: str | None = None
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
    """Progress on stderr, so stdout carries only the result: one line, credentials masked
    and control characters escaped (``terminal.shown``)."""
    print(f"mlflow-steps: {shown(message)}", file=sys.stderr, flush=True)


def resolve_spec(codeset: Path, options: BuildOptions, environ: dict[str, str],
                 forward_pip_config: bool = True) -> tuple[EnvSpec, BuildPipConfig]:
    """The codeset's environment spec with the pip indexes a build would use folded in
    (without credentials): the one spec path of `hash`, `render` and `build`."""
    pip = collect_pip_config(environ) if forward_pip_config else BuildPipConfig()
    index, extras = pip.public_urls()
    _, spec = resolve_env(codeset, replace(options, index_url=index, extra_index_urls=extras),
                          environ)
    if options.resolve:
        from mlflow_steps.build.pinning import pinned_spec  # only --resolve loads the pinning

        spec = pinned_spec(spec, pip, environ)
    return spec, pip


@dataclass(frozen=True)
class BuildTarget:
    """What the builder decided before any engine runs: spec, tag, where it goes."""

    spec: EnvSpec
    destination: ImageRef
    pull_reference: str
    pip: BuildPipConfig
    registries: RegistryClients  # the command's registry clients, one per host

    @property
    def client(self) -> RegistryClient:
        """The destination registry's client."""
        return self.registries.client(self.destination.registry)


def resolve_target(codeset: Path, inputs: BuilderInputs, environ: dict[str, str]) -> BuildTarget:
    """Hash the codeset's environment and name its image; nothing is built or pushed."""
    check_destination(inputs.push_registry(), inputs.repository, source="input")
    spec, pip = resolve_spec(codeset, inputs.options, environ, inputs.forward_pip_config)
    tag = env_tag(spec)
    destination = ImageRef(inputs.push_registry(), inputs.repository, tag)
    if inputs.verbose:
        log("environment spec:")
        for line in spec.explain(template_version()).splitlines():
            log(line)
        log(pip.describe())
    registries = RegistryClients(
        insecure_registries=inputs.insecure_registries,
        verify=str(inputs.registry_ca) if inputs.registry_ca else True, environ=environ)
    return BuildTarget(spec, destination, f"{inputs.pull_prefix()}/{inputs.repository}:{tag}",
                       pip, registries)


def existing_digest(target: BuildTarget, force: bool) -> str | None:
    """The digest under the target's tag, or None when it must be built."""
    if force:
        return None
    digest = target.client.manifest_digest(target.destination.repository,
                                           target.destination.tag)
    if digest:
        log(f"{target.destination} already exists ({digest}); build skipped")
    return digest


def pushed_digest(client: RegistryClient, destination: ImageRef, engine: str) -> str:
    """The digest the registry now serves for ``destination``; fails when it has none."""
    digest = client.manifest_digest(destination.repository, destination.tag)
    if not digest:
        raise StepError(f"{engine} reported success but {destination} is not in the "
                        "registry", source="push")
    log(f"pushed {destination} ({digest}), built by {engine}")
    return digest


def check_engine_platforms(inputs: BuilderInputs, engine: str) -> None:
    """One line when an engine is to build for a platform but linux/amd64: it would run the
    environment's installs under emulation (the direct builder needs none)."""
    foreign = [p for p in inputs.options.platforms if p not in DEFAULT_PLATFORMS]
    if foreign:
        raise StepError(f"{', '.join(foreign)}: {engine} builds linux/amd64 images only here "
                        f"(another CPU would need emulation); the direct builder makes "
                        f"them without", source="input", field="platform")


def run_builder(codeset: Path, inputs: BuilderInputs,
                environ: dict[str, str] | None = None) -> BuildOutcome:
    """Build and push the codeset's environment image unless the registry has it."""
    environ = dict(os.environ if environ is None else environ)
    if inputs.builder not in ("auto", "direct"):
        check_engine_platforms(inputs, inputs.builder)
    target = resolve_target(codeset, inputs, environ)
    digest = existing_digest(target, inputs.force or inputs.check_reproducible)
    if digest:
        return BuildOutcome(target.pull_reference, digest, built=False, backend=None)
    from mlflow_steps.build.direct import NotApplicable  # the skip path never loads the engines
    from mlflow_steps.build.engines import select_backend  # the skip path never loads the engines
    from mlflow_steps.build.image_plan import image_plan  # the skip path never loads the engines

    plan = image_plan(target.spec)  # the one description of the image, for every builder
    backend = select_backend(inputs.builder, environ)
    log(f"building {target.destination} with {backend.name} ({target.spec.strategy}, "
        f"base {target.spec.base_image})")
    try:
        _build(backend, target, plan, inputs, environ)
    except NotApplicable as exc:  # raised before the direct builder pushes anything
        if inputs.options.platforms != DEFAULT_PLATFORMS:  # no engine builds it either
            raise StepError(f"{', '.join(inputs.options.platforms)}: the direct builder "
                            f"cannot build it ({exc}), and engines build linux/amd64 only "
                            f"here", source="input", field="platform") from None
        if inputs.builder != "auto":  # the builder asked for, or none
            raise StepError(f"the direct builder does not apply: {exc} (--builder auto "
                            "builds it with an engine)", source="input",
                            field="builder") from None
        try:
            backend = select_backend("auto", environ, engines_only=True)
        except StepError as error:
            raise StepError(f"the direct builder does not apply ({exc}) and {error.detail}",
                            source=error.source, field=error.field) from None
        log(f"building with {backend.name}: the direct builder does not apply: {exc}")
        _build(backend, target, plan, inputs, environ)
    digest = pushed_digest(target.client, target.destination, backend.name)
    if inputs.check_reproducible:
        check_reproducible(backend, target, plan, inputs, environ, digest)
    elif inputs.reproducible is not False:
        log(f"built reproducibly (every time clamped to epoch {SOURCE_DATE_EPOCH}"
            "); a dependency compiled from source may still vary: --check-reproducible "
            "verifies")
    return BuildOutcome(target.pull_reference, digest, built=True, backend=backend.name)


def check_reproducible(backend: Backend, target: BuildTarget, plan: ImagePlan,
                       inputs: BuilderInputs, environ: dict[str, str], first_digest: str
                       ) -> None:
    """Build again without any engine cache (Buildah: a fresh store); a different digest fails
    the step with what differs, file by file (both images read back from the registry)."""
    from mlflow_steps.image.diff import diff_images  # only --check-reproducible compares images

    repository, platforms = target.destination.repository, target.spec.platforms
    first = [target.client.manifest(repository, first_digest, p) for p in platforms]
    log(f"checking reproducibility: building {target.destination} again without cache")
    _build(backend, target, plan, inputs, environ, no_cache=True)
    second_digest = pushed_digest(target.client, target.destination, backend.name)
    if second_digest == first_digest:
        log(f"reproducible: the second build gave the same digest ({first_digest})")
        return
    for platform, (digest, manifest) in zip(platforms, first, strict=True):
        again, second = target.client.manifest(repository, second_digest, platform)
        if again != digest:  # an index: each platform's image that differs
            for line in diff_images(target.client, repository, manifest, second):
                log(f"  {platform + ': ' if len(platforms) > 1 else ''}{line}")
    hint = " (--no-reproducible was given)" if inputs.reproducible is False else ""
    raise StepError(f"not reproducible{hint}: two builds gave {first_digest} and "
                    f"{second_digest}; what differs is listed above", source="build",
                    exit_code=1)


def base_labels(base_image: str, registries: RegistryClients) -> dict[str, str]:
    """org.opencontainers.image.base.digest: the digest the base's registry serves now
    (none, with a log line, when that registry cannot say)."""
    base = ImageRef.parse(base_image)
    if base.tag.startswith("sha256:"):
        return {"org.opencontainers.image.base.digest": base.tag}
    try:
        digest = registries.client(base.registry).manifest_digest(base.repository, base.tag)
    except StepError as exc:
        digest = None
        log(f"the base image's digest is not recorded: {exc}")
    return {"org.opencontainers.image.base.digest": digest} if digest else {}


def build_request(target: BuildTarget, plan: ImagePlan, inputs: BuilderInputs,
                  context: Path | None, docker_config: Path, secrets: dict[str, Path]
                  ) -> BuildRequest:
    """The engine-neutral build request for ``target`` (``plan``, rendered as ``context``
    for an engine)."""
    # the skip path never loads the engines
    from mlflow_steps.build.engines.engine import BuildRequest

    return BuildRequest(
        labels=base_labels(target.spec.base_image, target.registries),
        context=context, destination=target.destination,
        base_image=ImageRef.parse(target.spec.base_image), docker_config=docker_config,
        registries=target.registries,
        secrets=secrets, insecure_registries=inputs.insecure_registries,
        registry_ca=inputs.registry_ca, compressed_caching=inputs.compressed_caching,
        cache_repo=inputs.cache_repo, verbose=inputs.verbose,
        source_date_epoch=None if inputs.reproducible is False else SOURCE_DATE_EPOCH,
        plan=plan, pip=target.pip, compression=inputs.compression,
        own_layer_bytes=inputs.own_layer_mb << 20, quiet=inputs.quiet,
        platforms=target.spec.platforms, conda_channel_alias=inputs.conda_channel_alias,
    )


def _build(backend: Backend, target: BuildTarget, plan: ImagePlan, inputs: BuilderInputs,
           environ: dict[str, str], no_cache: bool = False) -> None:
    if inputs.compression != "gzip" and backend.name != "direct":
        log(f"compression {inputs.compression} is the direct builder's; {backend.name} "
            "compresses as it does")
    # the skip path never loads the templates
    from mlflow_steps.build.dockerfile import write_context
    from mlflow_steps.core import interrupt  # the skip path never needs it

    with interrupt.private_directory("mlflow-steps-build-") as workspace:
        context = write_context(plan, workspace / "context", run_mounts(target.pip),
                                inputs.conda_channel_alias, environ
                                ) if backend.needs_context else None
        secrets = write_secret_files(workspace / "secrets", target.pip)
        request = build_request(target, plan, inputs, context, docker_config_dir(environ),
                                secrets)
        backend.build_and_push(replace(request, no_cache=no_cache))
