"""`--builder direct`: install the image plan's environment, lay it out as layers and push
the image, with no engine."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mlflow_steps.build.direct import NotApplicable
from mlflow_steps.build.direct.assemble import (
    LayerPlan,
    environment_groups,
    image_config,
    record_layer,
    tree_plan,
    user_layer,
    with_bytecode,
)
from mlflow_steps.build.direct.base_image import BaseFacts, facts_summary, layer_file, load_base
from mlflow_steps.build.direct.bytecode import SharedBytecode, compile_bytecode
from mlflow_steps.build.direct.install import StagedEnv, check_files, stage
from mlflow_steps.build.engines.engine import Backend, BuildRequest
from mlflow_steps.core.cache import cache_root
from mlflow_steps.core.interrupt import ThreadPool, private_directory
from mlflow_steps.core.progress import Phase, Progress
from mlflow_steps.core.terminal import escape
from mlflow_steps.env.hashing import SOURCE_DATE_EPOCH
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.layers import Layer, LayerCache, entries_key, write_layer
from mlflow_steps.image.push import Blob, push_index, push_manifest

LAYOUT_VERSION = "direct-2"  # part of every layer's cache key


@dataclass(frozen=True)
class LayerJob:
    """A layer to make: its plan before bytecode, and whether to compile its sources."""

    plan: LayerPlan
    sources: frozenset[Path] = frozenset()  # .py files to compile into it
    checked: bool = False  # staged files: check them before they go into a layer


class DirectBackend(Backend):
    """Builds without an engine; NotApplicable, before any push, when it cannot do so
    safely."""

    name = "direct"
    needs_context = False  # reads the image plan itself

    def unavailable_reason(self) -> str | None:
        return None  # needs only the registries, which every build needs

    def _log(self, message: str, started: float) -> None:
        print(f"[direct] {message} ({time.monotonic() - started:.1f} s)", file=sys.stderr,
              flush=True)

    def build_and_push(self, request: BuildRequest) -> None:
        if request.plan is None or request.pip is None:
            raise NotApplicable("no image plan was given to it")
        started = time.monotonic()
        cache = cache_root(self.environ)
        scratch = cache / "work"  # beside uv's cache, usually: installs hard-link from it
        scratch.mkdir(parents=True, exist_ok=True)
        progress = Progress(quiet=request.quiet, environ=self.environ)
        destination = request.destination
        several = len(request.platforms) > 1
        bytecode = SharedBytecode() if several else None  # a platform's pycs: another's too
        workers = os.cpu_count() or 2
        with private_directory("direct-", scratch) as work, \
                ThreadPool(max_workers=workers) as pool, \
                _LayerProduction(workers, progress) as production:
            # The platforms' bases are read side by side, then the platforms stage in turn,
            # in the order given (their Python work shares one interpreter lock): each one's
            # new layers are made as soon as it is checked, while the next one stages, but
            # none is pushed before every platform is: a NotApplicable (or a distribution
            # with no wheel for one platform) leaves the registry untouched.
            base_client = request.registries.client(request.base_image.registry)
            with ThreadPool(max_workers=len(request.platforms)) as readers:
                bases = list(readers.map(
                    lambda platform: load_base(str(request.base_image), base_client, cache,
                                               platform), request.platforms))
            prepared = []
            for base in bases:
                self._log(facts_summary(base), started)
                one = self._prepare(request, base, cache, work / base.architecture, pool,
                                    progress, started, bytecode)
                production.add(one)
                prepared.append(one)
            made = production.push_all()
            pushed = [(one.platform, self._push(one, request, made, started,
                                                None if several else destination.tag))
                      for one in prepared]
            if several:
                client = request.registries.client(destination.registry)
                push_index(client, destination.repository, destination.tag, pushed)
        self._log(f"pushed {destination}" + (
            f" (an index of {', '.join(request.platforms)})" if several else ""), started)

    def _prepare(self, request: BuildRequest, base: BaseFacts, cache: Path, work: Path,
                 pool: ThreadPool, progress: Progress, started: float,
                 bytecode: SharedBytecode | None) -> _Prepared:
        """Stage the environment on ``base`` (the image of one of the build's platforms) and
        decide its layers (each checked, or one made before): nothing is pushed."""
        assert request.plan is not None and request.pip is not None
        plan = request.plan
        platform = base.platform
        client = request.registries.client(request.destination.registry)
        work.mkdir()
        several = len(request.platforms) > 1
        with progress.phase(f"staging {platform}" if several else "staging"):
            staged = stage(plan, base, request.pip, self.environ, work,
                           no_cache=request.no_cache,
                           conda_channel_alias=request.conda_channel_alias)
        self._log(f"environment staged for {platform} "
                  f"{staged.stager.interpreter or 'conda python ' + staged.stager.version}",
                  started)
        record = pool.submit(record_layer, staged)  # lock and SBOM, meanwhile
        jobs = [LayerJob(tree_plan(staged, name, paths),
                         frozenset(p for p in paths if p.suffix == ".py"), checked=True)
                for name, paths in environment_groups(staged, request.own_layer_bytes)]
        jobs.append(LayerJob(user_layer(base, plan.user)))
        known = None if request.no_cache else LayerCache(cache / "layers")
        maker = _LayerMaker(staged, work, known, request.compression, client,
                            request.destination.repository, bytecode)
        decided = list(pool.map(maker.decide, jobs))
        jobs.append(LayerJob(record.result()))
        decided.append(maker.decide(jobs[-1]))
        if maker.on_demand_unmet:
            self._log(_on_demand_line(maker.on_demand_unmet), started)
        return _Prepared(base, staged, jobs, decided, maker)

    def _push(self, prepared: _Prepared, request: BuildRequest,
              made: dict[str, tuple[Blob, str]], started: float,
              tag: str | None) -> dict[str, object]:
        """Push ``prepared``'s config and manifest (under ``tag``; None: by digest, for the
        index), its layers reused or in ``made``; the manifest's descriptor."""
        assert request.plan is not None
        base, jobs = prepared.base, prepared.jobs
        layers = [reused or made[key] for key, reused in prepared.decided]
        reused = sum(1 for _, layer in prepared.decided if layer is not None)
        self._log(("" if tag else f"{prepared.platform}: ") +
                  f"{len(layers)} layers ({reused} made before: not remade)", started)
        destination = request.destination
        client = request.registries.client(destination.registry)
        base_client = request.registries.client(request.base_image.registry)
        same_registry = request.base_image.registry == destination.registry
        config = image_config(base, request.plan, [(job.plan.name, diff_id) for job, (_, diff_id)
                                                   in zip(jobs, layers, strict=True)],
                              request.labels, prepared.staged.cuda)
        cache = cache_root(self.environ)
        base_blobs = [Blob(dict(layer), mount_from=base.repository) if same_registry else
                      Blob(dict(layer), path=layer_file(base_client, base.repository,
                                                        layer, cache))
                      for layer in base.layers]
        return push_manifest(client, destination.repository, tag, config,
                             base_blobs + [blob for blob, _ in layers], prepared.staged.work,
                             oci=tag is None)


@dataclass(frozen=True)
class _Prepared:
    """One platform's image, staged and decided, before anything of it is pushed."""

    base: BaseFacts
    staged: StagedEnv
    jobs: list[LayerJob]
    decided: list[tuple[str, tuple[Blob, str] | None]]
    maker: _LayerMaker

    @property
    def platform(self) -> str:
        return self.base.platform


def _on_demand_line(unmet: dict[str, str], shown: int = 5) -> str:
    """What plugins loaded only on demand need and the image lacks (library -> plugin)."""
    items = sorted(unmet.items())
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return "plugins loaded only on demand lack, in the image: " + "; ".join(
        f"{escape(library)} (for {escape(plugin)})" for library, plugin in items[:shown]) + more


def _file_bytes(plan: LayerPlan) -> int:
    """What a layer's files hold (before its bytecode is compiled)."""
    return sum(entry.data.stat().st_size if isinstance(entry.data, Path) else len(entry.data)
               for entry in plan.entries if entry.kind == "file")


class _LayerMaker:
    """Makes a layer unless one made from the same files is in the cache and in the registry
    (the destination repository, or another to mount it from): else compile its sources,
    write the tar, compress it."""

    def __init__(self, staged: StagedEnv, work: Path, known: LayerCache | None,
                 compression: str, client: RegistryClient, repository: str,
                 bytecode: SharedBytecode | None) -> None:
        self.staged, self.work, self.known, self.bytecode = staged, work, known, bytecode
        self.compression, self.client, self.repository = compression, client, repository
        self.on_demand_unmet: dict[str, str] = {}  # library -> the plugin needing it

    def _reusable(self, cached: dict[str, object]) -> Blob | None:
        descriptor = {k: cached[k] for k in ("mediaType", "digest", "size")}
        digest = str(cached["digest"])
        if self.client.has_blob(self.repository, digest):
            return Blob(descriptor)
        registry, _, source = str(cached.get("pushed_to") or "").partition("/")
        if registry == self.client.host and source and self.client.has_blob(source, digest):
            return Blob(descriptor, mount_from=source)
        return None

    def decide(self, job: LayerJob) -> tuple[str, tuple[Blob, str] | None]:
        """The layer's cache key, and the layer (blob, diff_id) when one made from the same
        files is reusable; else its staged files are checked (NotApplicable: nothing of the
        image is pushed yet)."""
        key = entries_key(job.plan.entries, LAYOUT_VERSION, self.staged.python_build,
                          str(SOURCE_DATE_EPOCH), self.compression)
        cached = self.known.get(key, SOURCE_DATE_EPOCH) if self.known else None
        reused = self._reusable(cached) if cached else None
        if cached and reused:
            return key, (reused, str(cached["diff_id"]))
        if job.checked:
            self.on_demand_unmet.update(check_files(
                self.staged, [self.staged.root / e.name for e in job.plan.entries
                              if e.kind != "dir"]))
        return key, None

    def write(self, job: LayerJob, index: int, compressing: Phase) -> Layer:
        """The layer file of a ``decide``d job: its sources compiled, its bytes counted in
        ``compressing``; nothing is pushed."""
        plan = job.plan
        if job.sources:
            compile_bytecode(self.staged, sorted(job.sources), self.work, self.bytecode)
            plan = with_bytecode(self.staged, plan, job.sources)
            compressing.grow(_file_bytes(plan) - _file_bytes(job.plan))  # the pycs
        return write_layer(plan.entries, self.work / f"layer-{index}", SOURCE_DATE_EPOCH,
                           self.compression, compressing.advance)

    def push(self, layer: Layer, name: str, key: str, pushing: Phase) -> tuple[Blob, str]:
        """Push a ``write``n layer (``key``: its cache key) unless the registry has it, its
        bytes counted in ``pushing``; its file removed, the cache told."""
        if not self.client.has_blob(self.repository, layer.digest):
            pushing.grow(layer.size)
            how = self.client.push_blob(self.repository, layer.digest, layer.path,
                                        progress=pushing.advance)
            print(f"[push] {layer.digest[:19]}: {how} ({name})", file=sys.stderr, flush=True)
        layer.path.unlink()
        if self.known:
            self.known.put(key, SOURCE_DATE_EPOCH, layer, f"{self.client.host}/{self.repository}")
        return Blob(layer.descriptor()), layer.diff_id


class _LayerProduction:
    """The platforms' new layers, each made once (a layer two platforms share: a pure-Python
    package's, the tooling's) as soon as its platform is checked, platform after platform (a
    later platform's layers take the bytecode an earlier one compiled), each one's largest
    first (by bytes: a CUDA library's layer is a few huge files, so none starts last while
    the other workers sit idle); pushed only by ``push_all``, once every platform is
    checked. Left by an error, the work not started is cancelled."""

    def __init__(self, workers: int, progress: Progress) -> None:
        self.progress, self.workers = progress, workers
        self._pool = ThreadPool(max_workers=workers)
        self._phases = contextlib.ExitStack()
        self._compressing: Phase | None = None
        self._written: dict[str, tuple[_Prepared, int, Future[Layer]]] = {}

    def __enter__(self) -> _LayerProduction:
        return self

    def add(self, one: _Prepared) -> None:
        """Start making ``one``'s layers not made before and not already started."""
        new = [(key, index) for index, (key, reused) in enumerate(one.decided)
               if reused is None and key not in self._written]
        sizes = {key: _file_bytes(one.jobs[index].plan) for key, index in new}
        if self._compressing is None:
            self._compressing = self._phases.enter_context(
                self.progress.phase("compressing", 0))
        self._compressing.grow(sum(sizes.values()))
        for key, index in sorted(new, key=lambda item: -sizes[item[0]]):
            self._written[key] = (one, index, self._pool.submit(
                one.maker.write, one.jobs[index], index, self._compressing))

    def push_all(self) -> dict[str, tuple[Blob, str]]:
        """Push every layer as it is written; cache key → (blob, diff_id)."""
        pushing = self._phases.enter_context(self.progress.phase("pushing", 0))

        def push(key: str) -> tuple[Blob, str]:
            one, index, written = self._written[key]
            return one.maker.push(written.result(), one.jobs[index].plan.name, key, pushing)

        with ThreadPool(max_workers=self.workers) as pushers:
            made = dict(zip(self._written, pushers.map(push, self._written), strict=True))
        self._phases.close()
        return made

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc_type is not None:
            self._pool.cancel_pending()
        try:
            self._pool.__exit__(exc_type, exc, traceback)
        finally:
            self._phases.close()
