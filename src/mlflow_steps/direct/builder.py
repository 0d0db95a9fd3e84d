"""`--builder direct`: stage, lay out and push the runtime image with no engine."""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow_steps.backends.base import Backend, BuildRequest
from mlflow_steps.cache import cache_root
from mlflow_steps.direct import NotApplicable
from mlflow_steps.direct.assemble import (
    FILE_TIME,
    LayerPlan,
    environment_layers,
    image_config,
    record_layer,
    user_layer,
)
from mlflow_steps.direct.base import facts_summary, layer_file, load_base
from mlflow_steps.direct.stage import stage
from mlflow_steps.hashing import source_date_epoch
from mlflow_steps.image_push import Blob, push_image
from mlflow_steps.layers import Layer, LayerCache, compress, write_tar
from mlflow_steps.registry import RegistryClient


class DirectBackend(Backend):
    """Builds without an engine; NotApplicable when it cannot do so safely."""

    name = "direct"

    def unavailable_reason(self) -> str | None:
        return None  # needs only the registries, which every build needs

    def _log(self, message: str, started: float) -> None:
        print(f"[direct] {message} ({time.monotonic() - started:.1f} s)", file=sys.stderr,
              flush=True)

    def _client(self, host: str, request: BuildRequest) -> RegistryClient:
        return RegistryClient(host, insecure_registries=request.insecure_registries,
                              verify=str(request.registry_ca) if request.registry_ca else True,
                              environ=self.environ)

    def build_and_push(self, request: BuildRequest) -> None:
        if request.spec is None or request.pip is None:
            raise NotApplicable("no environment spec was given to it")
        started = time.monotonic()
        spec, destination = request.spec, request.destination
        epoch = source_date_epoch(spec)
        cache = cache_root(self.environ)
        client = self._client(destination.registry, request)
        same_registry = request.base_image.registry == destination.registry
        base_client = client if same_registry else self._client(request.base_image.registry,
                                                                 request)
        base = load_base(str(request.base_image), base_client, cache)
        self._log(facts_summary(base), started)
        with tempfile.TemporaryDirectory(prefix="mlflow-steps-direct-") as tmp:
            work = Path(tmp)
            staged = stage(spec, request.context, base, request.pip, self.environ, epoch, work,
                           no_cache=request.no_cache)
            self._log(f"environment staged for {base.interpreters[str(spec.python)]}", started)
            plans = [*environment_layers(staged), user_layer(base, epoch),
                     record_layer(staged)]
            known = None if request.no_cache else LayerCache(cache / "layers")
            with ThreadPoolExecutor(max_workers=2) as pool:
                made = list(pool.map(
                    lambda item: _layer(item[1], work / f"layer-{item[0]}", known,
                                        lambda d: client.has_blob(destination.repository, d)),
                    enumerate(plans)))
            self._log(f"{len(made)} layers written", started)
            config = image_config(base, spec, [(p.name, diff_id) for p, (_, diff_id)
                                               in zip(plans, made, strict=True)],
                                  request.labels, epoch)
            base_blobs = [Blob(dict(layer), mount_from=base.repository) if same_registry else
                          Blob(dict(layer), path=layer_file(base_client, base.repository,
                                                            layer, cache))
                          for layer in base.layers]
            push_image(client, destination.repository, destination.tag, config,
                       base_blobs + [blob for blob, _ in made], work)
        self._log(f"pushed {destination}", started)


def _layer(plan: LayerPlan, out: Path, known: LayerCache | None,
           in_registry) -> tuple[Blob, str]:
    """The plan written as a tar, then compressed unless the registry has its blob."""
    tar = out.with_suffix(".tar")
    diff_id = write_tar(plan.entries, tar, FILE_TIME)
    cached = known.get(diff_id, FILE_TIME) if known else None
    if cached and in_registry(str(cached["digest"])):
        tar.unlink()
        return Blob({k: cached[k] for k in ("mediaType", "digest", "size")}), diff_id
    with tar.open("rb") as plain:
        layer: Layer = compress(plain, out.with_suffix(".tar.gz"))
    tar.unlink()
    if known:
        known.put(diff_id, FILE_TIME, layer)
    return Blob(layer.descriptor(), path=layer.path), diff_id
