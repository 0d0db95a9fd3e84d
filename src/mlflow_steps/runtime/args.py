"""Entry-point arguments: FuseML's `name=value` list, checked against MLproject types."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from mlflow_steps.core.errors import StepError
from mlflow_steps.env.project import EntryPoint, Project

FIELD = "mlflow_entrypoint_args"


def select_entry_point(project: Project, name: str) -> EntryPoint:
    """The entry point called ``name``, or an error listing the ones that exist."""
    if name not in project.entry_points:
        known = ", ".join(sorted(project.entry_points))
        raise StepError(f"unknown entry point '{name}' (MLproject declares: {known})",
                        field="mlflow_entrypoint")
    return project.entry_points[name]


def split_args(text: str) -> list[tuple[str, str]]:
    """``a=1 b=2``, ``a=1,b=2`` or ``msg='hello, world'`` → [(name, value), ...].

    Unquoted spaces and commas separate arguments; quote a value (as in a shell) to keep
    them. Everything after the first ``=`` is the value.
    """
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace += ","
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise StepError(f"malformed argument list ({exc})", field=FIELD) from None
    pairs = []
    for token in tokens:
        name, equals, value = token.partition("=")
        if not equals or not name.strip():
            raise StepError(f"'{token}' is not name=value (quote values that contain spaces "
                            "or commas)", field=FIELD)
        pairs.append((name.strip(), value))
    return pairs


def _check_type(name: str, kind: str, value: str) -> None:
    converters = {"int": int, "float": float}
    if kind in converters:
        try:
            converters[kind](value)
        except ValueError:
            raise StepError(f"{name}={value!r} is not a valid {kind}", field=FIELD) from None
    elif kind in ("path", "uri") and not value.strip():
        raise StepError(f"{name} is an empty {kind}", field=FIELD)


def env_var_for(name: str) -> str:
    """FuseML's variable for an input: FUSEML_ + upper-cased name, '-' → '_'."""
    return "FUSEML_" + name.upper().replace("-", "_")


def resolve_parameters(entry: EntryPoint, given: list[tuple[str, str]],
                       environ: Mapping[str, str]) -> dict[str, str]:
    """Arguments for ``entry``: given ones, else FUSEML_<NAME>, else the MLproject default."""
    declared = {p.name: p for p in entry.parameters}
    values: dict[str, str] = {}
    for name, value in given:
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise StepError(f"'{name}' is not a parameter of entry point '{entry.name}' "
                            f"(declared: {known})", field=FIELD)
        if name in values:
            raise StepError(f"'{name}' is given twice", field=FIELD)
        values[name] = value
    missing = []
    for name, parameter in declared.items():
        if name not in values and environ.get(env_var_for(name), "") != "":
            values[name] = environ[env_var_for(name)]
        if name not in values and parameter.default is None:
            missing.append(name)
        if name in values:
            _check_type(name, parameter.type, values[name])
    if missing:
        raise StepError(f"entry point '{entry.name}' needs {', '.join(missing)} (no default): "
                        f"pass them as name=value or set {env_var_for(missing[0])}", field=FIELD)
    return values
