"""FuseML's extension registry as files: records, selector matching, env and secrets.

A registry is a YAML/JSON file (one record, a list of records or several YAML documents)
or a directory of such files. Matching follows FuseML's extension store: the record's
``id``/``product``/``zone``/``version`` (exact or a semver range), then the service's
``id``/``resource``/``category``; a service needs an endpoint, and credentials when
``authrequired``. Internal endpoints are preferred; credentials are chosen by scope, most
specific first (user, then project, then global; ``default: true`` breaks ties).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import has_credentials, is_secret_name
from mlflow_steps.core.yaml_file import read_yaml_documents
from mlflow_steps.workflow.loader import yaml_nodes
from mlflow_steps.workflow.model import Selector, Workflow
from mlflow_steps.workflow.nodes import Node
from mlflow_steps.workflow.versions import version_matches

ENDPOINT_TYPES = ("internal", "external")
SCOPES = ("global", "project", "user")
REGISTRY_SUFFIXES = (".yaml", ".yml", ".json")

Config = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Credentials:
    id: str
    scope: str
    projects: tuple[str, ...]
    users: tuple[str, ...]
    default: bool
    configuration: Config

    def rank(self, project: str, user: str) -> int | None:
        """How specifically these credentials fit (higher is better); None if they don't."""
        in_project = not self.projects or project in self.projects
        if self.scope == "user":
            return 3 if user in self.users and in_project else None
        if self.scope == "project":
            return 2 if project in self.projects else None
        return 1


@dataclass(frozen=True)
class Endpoint:
    url: str
    type: str
    configuration: Config


@dataclass(frozen=True)
class Service:
    id: str
    resource: str
    category: str
    auth_required: bool
    configuration: Config
    endpoints: tuple[Endpoint, ...]
    credentials: tuple[Credentials, ...]


@dataclass(frozen=True)
class Extension:
    id: str
    product: str
    version: str
    zone: str
    configuration: Config
    services: tuple[Service, ...]
    source: str


@dataclass(frozen=True)
class Identity:
    """Who runs the workflow, for credential scopes."""

    project: str
    user: str


@dataclass(frozen=True)
class Access:
    """A selector resolved to one extension, service, endpoint and (maybe) credentials."""

    selector: str
    extension: Extension
    service: Service
    endpoint: Endpoint
    credentials: Credentials | None

    def env(self) -> dict[str, str]:
        """Every configuration map, from the record down to the credentials."""
        maps = [self.extension.configuration, self.service.configuration,
                self.endpoint.configuration]
        if self.credentials:
            maps.append(self.credentials.configuration)
        return {key: value for config in maps for key, value in config}

    def secret_keys(self) -> set[str]:
        """Keys whose values are credentials: the credentials' configuration, any value that
        carries one (a URL with user-info or a token parameter) or is named like one, and
        ``url`` when the endpoint URL carries one."""
        keys = {key for key, _ in self.credentials.configuration} if self.credentials else set()
        keys |= {key for key, value in self.env().items()
                 if is_secret_name(key) or has_credentials(value)}
        if has_credentials(self.endpoint.url):
            keys.add("url")
        return keys

    def secrets(self) -> set[str]:
        """Credential values: never to be shown."""
        values = {**self.env(), "url": self.endpoint.url}
        return {values[key] for key in self.secret_keys() if values.get(key)}

    def attribute(self, name: str, key: str = "") -> str:
        """``url``, ``version``, ``zone`` or configuration ``key`` (for expressions)."""
        if name == "url":
            return self.endpoint.url
        if name in ("version", "zone"):
            return getattr(self.extension, name)
        env = self.env()
        if key not in env:
            raise StepError(f"extension {self.extension.id!r} (service {self.service.id!r}) "
                            f"has no configuration key {key!r}", field=f"extension.{self.selector}")
        return env[key]


@dataclass(frozen=True)
class ExtensionRegistry:
    extensions: tuple[Extension, ...]
    source: str

    def resolve(self, selector: Selector, identity: Identity) -> Access:
        """The first record/service matching ``selector``, or a one-line error naming it."""
        partial: list[str] = []
        for extension in self._extensions(selector):
            for service in self._services(extension, selector):
                access = _access(selector.name, extension, service, identity)
                if access:
                    return access
                partial.append(f"{extension.id}/{service.id}")
        why = (f"; {', '.join(partial)} matched but has no usable endpoint or no credentials "
               f"for project {identity.project!r} / user {identity.user!r}") if partial else ""
        raise selector.where.error(
            f"no extension in {self.source} matches selector {selector.describe()}{why}")

    def _extensions(self, selector: Selector) -> Iterator[Extension]:
        for extension in self.extensions:
            if all(not selector.get(field) or selector.get(field) == value for field, value in (
                    ("extension_id", extension.id), ("product", extension.product),
                    ("zone", extension.zone))) and \
                    version_matches(extension.version, selector.get("version")):
                yield extension

    @staticmethod
    def _services(extension: Extension, selector: Selector) -> Iterator[Service]:
        for service in extension.services:
            if all(not selector.get(field) or selector.get(field) == value for field, value in (
                    ("service_id", service.id), ("service_resource", service.resource),
                    ("service_category", service.category))):
                yield service


def resolve_steps(workflow: Workflow, registry: ExtensionRegistry | None, identity: Identity
                  ) -> dict[tuple[str, str], Access]:
    """Every step's selectors resolved, keyed by (step, selector): all errors up front."""
    access = {}
    for step in workflow.steps:
        for selector in step.extensions:
            if registry is None:
                raise selector.where.error(f"step {step.name!r} uses extension "
                                           f"{selector.name!r}: pass --extensions FILE")
            access[step.name, selector.name] = registry.resolve(selector, identity)
    return access


def _access(selector: str, extension: Extension, service: Service, identity: Identity
            ) -> Access | None:
    endpoints = sorted(service.endpoints, key=lambda e: ENDPOINT_TYPES.index(e.type))
    ranked = [(rank, not c.default, index, c) for index, c in enumerate(service.credentials)
              if (rank := c.rank(identity.project, identity.user)) is not None]
    ranked.sort(key=lambda item: (-item[0], item[1], item[2]))
    credentials = ranked[0][3] if ranked else None
    if not endpoints or (service.auth_required and credentials is None):
        return None
    return Access(selector, extension, service, endpoints[0], credentials)


def load_registry(path: Path) -> ExtensionRegistry:
    """Records from a file, or from every .yaml/.yml/.json file of a directory."""
    files = sorted(p for p in path.iterdir() if p.suffix in REGISTRY_SUFFIXES) \
        if path.is_dir() else [path]
    extensions: list[Extension] = []
    for file in files:
        # The one bounded reader and YAML loader: a FIFO, a device or a huge file is one line.
        for document in yaml_nodes(read_yaml_documents(file, what="extension files"),
                                   str(file)):
            records = document.items() if document.is_list() else [document]
            for record in records:
                extension = _extension(record)
                if any(known.id == extension.id for known in extensions):
                    raise record.where.error(f"duplicate extension id {extension.id!r}")
                extensions.append(extension)
    return ExtensionRegistry(tuple(extensions), str(path))


def _config(values: dict[str, Node]) -> Config:
    node = values.get("configuration")
    if node is None or node.is_null():
        return ()
    return tuple((key, value.optional_text()) for key, value in node.mapping(None).items())


def _text(values: dict[str, Node], key: str) -> str:
    return values[key].optional_text() if key in values else ""


def _names(values: dict[str, Node], key: str) -> tuple[str, ...]:
    return tuple(item.text() for item in values[key].items()) if key in values else ()


def _choice(values: dict[str, Node], key: str, choices: tuple[str, ...]) -> str:
    value = _text(values, key) or choices[0]
    if value not in choices:
        raise values[key].where.error(f"{value!r} is not one of: {', '.join(choices)}")
    return value


def _extension(node: Node) -> Extension:
    values = node.mapping(("id", "product", "version", "description", "zone", "configuration",
                           "services"), required=("id",))
    services = [_service(item) for item in values["services"].items()] \
        if "services" in values else []
    ids = [service.id for service in services]
    if len(set(ids)) != len(ids):
        raise values["services"].where.error("duplicate service id")
    return Extension(values["id"].name(), _text(values, "product"), _text(values, "version"),
                     _text(values, "zone"), _config(values), tuple(services), node.where.file)


def _service(node: Node) -> Service:
    values = node.mapping(("id", "resource", "category", "authrequired", "auth_required",
                           "description", "configuration", "endpoints", "credentials"),
                          required=("id",))
    auth = _text(values, "authrequired") or _text(values, "auth_required")
    endpoints = tuple(_endpoint(item) for item in values["endpoints"].items()) \
        if "endpoints" in values else ()
    credentials = tuple(_credentials(item, index) for index, item in enumerate(
        values["credentials"].items())) if "credentials" in values else ()
    return Service(values["id"].name(), _text(values, "resource"), _text(values, "category"),
                   auth.lower() in ("true", "yes", "1"), _config(values), endpoints, credentials)


def _endpoint(node: Node) -> Endpoint:
    values = node.mapping(("url", "type", "configuration"), required=("url",))
    return Endpoint(values["url"].name(), _choice(values, "type", ENDPOINT_TYPES),
                    _config(values))


def _credentials(node: Node, index: int) -> Credentials:
    values = node.mapping(("id", "scope", "default", "projects", "users", "configuration"))
    scope = _choice(values, "scope", SCOPES)
    credentials = Credentials(_text(values, "id") or f"credentials-{index}", scope,
                              _names(values, "projects"), _names(values, "users"),
                              _text(values, "default").lower() == "true", _config(values))
    if scope != "global" and not (credentials.projects or credentials.users):
        raise node.where.error(f"{scope}-scoped credentials need 'projects' or 'users'")
    return credentials
