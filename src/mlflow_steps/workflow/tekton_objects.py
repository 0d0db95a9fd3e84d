"""The Kubernetes objects of one Tekton export besides the Pipeline and Tasks: their names
(unique per kind, or the export is refused) and the ConfigMaps/Secrets the extensions are
read from.

With an extensions file, each matched service gets a ConfigMap (endpoint url, version,
zone, configuration) and, when it has credentials, a Secret (placeholder values), read
through ``valueFrom``; ``{{ extension.E.* }}`` becomes ``$(FUSEML_EXT_E_*)``, expanded by
Kubernetes from an env var defined earlier in the same container. Without one, extensions
are resolved in-cluster: one ConfigMap (and an optional Secret) per selector, which the
cluster's operator provides, its keys the step's env (``envFrom``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlflow_steps.core.errors import StepError
from mlflow_steps.workflow.expressions import ExtensionRef
from mlflow_steps.workflow.extensions import Access, ExtensionRegistry, Identity, resolve_steps
from mlflow_steps.workflow.model import Step, Workflow, k8s_name

PLACEHOLDER = "REPLACE-ME"
PART_OF = "app.kubernetes.io/part-of"


def ext_var(ref: ExtensionRef) -> str:
    """The env var that carries one extension attribute inside the task's container."""
    return re.sub(r"[^A-Z0-9_]", "_", f"FUSEML_EXT_{ref.selector}_{ref.key or ref.attribute}"
                  .upper())


class Names:
    """The object names one export gives out, per kind: two different sources never share one
    (a name cut to 63 characters keeps a hash, but the hash is short and sanitizing merges)."""

    def __init__(self, export: str) -> None:
        self.export = export
        self._given: dict[tuple[str, str], tuple[str, ...]] = {}

    def __call__(self, kind: str, *parts: str) -> str:
        name = k8s_name(*parts)
        other = self._given.setdefault((kind, name), parts)
        if other != parts:
            raise StepError(f"{'/'.join(other)!r} and {'/'.join(parts)!r} both become the "
                            f"{kind} {name!r}: rename one")
        return name

    def meta(self, name: str) -> dict[str, Any]:
        """An object's metadata: its name and the label of the export it is part of."""
        return {"name": name, "labels": {PART_OF: self.export}}


@dataclass(frozen=True)
class _Objects:
    """Per matched service: its ConfigMap and (when it has credentials) Secret."""

    config_map: str
    secret: str | None
    secret_keys: frozenset[str]

    def ref(self, key: str) -> dict[str, Any]:
        if self.secret and key in self.secret_keys:
            return {"secretKeyRef": {"name": self.secret, "key": key}}
        return {"configMapKeyRef": {"name": self.config_map, "key": key}}


class ExtensionObjects:
    """Where the steps' extension values come from, and the documents that hold them."""

    def __init__(self, workflow: Workflow, registry: ExtensionRegistry | None,
                 identity: Identity, names: Names) -> None:
        self.workflow = workflow
        self.names = names
        self.in_cluster = registry is None
        self.access = {} if registry is None else resolve_steps(workflow, registry, identity)

    def in_cluster_objects(self, selector: str) -> str:
        """The ConfigMap (and optional Secret) name of an in-cluster extension selector."""
        self.names("Secret", self.names.export, "ext", selector)
        return self.names("ConfigMap", self.names.export, "ext", selector)

    def _service_objects(self, access: Access) -> _Objects:
        parts = (self.names.export, access.extension.id, access.service.id)
        keys = frozenset(access.secret_keys())
        return _Objects(self.names("ConfigMap", *parts),
                        self.names("Secret", *parts) if keys else None, keys)

    def documents(self) -> list[dict[str, Any]]:
        if self.in_cluster:
            return self._in_cluster_templates()
        meta = self.names.meta
        documents: dict[str, dict[str, Any]] = {}
        for access in self.access.values():
            objects = self._service_objects(access)
            env = access.env()
            data = {"url": access.endpoint.url, "version": access.extension.version,
                    "zone": access.extension.zone, **env}
            data = {k: v for k, v in data.items() if k not in objects.secret_keys}
            documents[f"ConfigMap/{objects.config_map}"] = {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(objects.config_map),
                "data": data}
            if objects.secret:
                documents[f"Secret/{objects.secret}"] = {
                    "apiVersion": "v1", "kind": "Secret", "metadata": meta(objects.secret),
                    "type": "Opaque",
                    "stringData": dict.fromkeys(sorted(objects.secret_keys), PLACEHOLDER)}
        return list(documents.values())

    def _in_cluster_templates(self) -> list[dict[str, Any]]:
        """A ConfigMap per selector to fill in: its keys become the step's env (as FuseML
        injects an extension's configuration); ``url``/``version``/``zone`` serve
        ``{{ extension.* }}`` expressions. Credentials go in the Secret of the same name."""
        selectors = dict.fromkeys(s.name for step in self.workflow.steps
                                  for s in step.extensions)
        return [{"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {**self.names.meta(self.in_cluster_objects(name)), "annotations": {
                     "mlflow-steps/fill-in": "endpoint configuration (e.g. MLFLOW_TRACKING_URI);"
                     " credentials in the Secret of the same name (optional)"}},
                 "data": {"url": PLACEHOLDER}} for name in selectors]

    def env(self, step: Step, refs: list[ExtensionRef]) -> dict[str, dict[str, Any]]:
        """The env of ``step`` from extensions: each referenced attribute (``refs``), then
        every variable of a matched service (with an extensions file)."""
        env: dict[str, dict[str, Any]] = {}
        for ref in refs:
            if self.in_cluster:
                env[ext_var(ref)] = {"value": f"$({ref.key})"} if ref.key else {
                    "valueFrom": {"configMapKeyRef": {
                        "name": self.in_cluster_objects(ref.selector), "key": ref.attribute}}}
                continue
            objects = self._service_objects(self.access[step.name, ref.selector])
            env[ext_var(ref)] = {"valueFrom": objects.ref(ref.key or ref.attribute)}
        for selector in step.extensions:
            if self.in_cluster:
                continue
            access = self.access[step.name, selector.name]
            objects = self._service_objects(access)
            env.update({key: {"valueFrom": objects.ref(key)} for key in access.env()})
        return env

    def env_from(self, step: Step) -> list[dict[str, Any]]:
        """In-cluster extensions: every key of the selector's ConfigMap and Secret."""
        if not self.in_cluster:
            return []
        names = dict.fromkeys(self.in_cluster_objects(s.name) for s in step.extensions)
        sources: list[dict[str, Any]] = []
        for name in names:
            sources += [{"configMapRef": {"name": name}},
                        {"secretRef": {"name": name, "optional": True}}]
        return sources
