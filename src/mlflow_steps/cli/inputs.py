"""What the step commands share: a step input (a flag and its FUSEML_* variable), the
CODESET argument, host lists, and writing the step's results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mlflow_steps.core.stepio import result_path, write_outputs


def _empty_is_default(default: Any) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        return default if value in ("", None) else value

    return callback


def step_input(name: str, default: Any = None, **kwargs: Any) -> Callable[[Any], Any]:
    """A step input: flag ``--name-with-dashes`` and env var ``FUSEML_NAME`` (empty = unset)."""
    flag = f"--{name.replace('_', '-')}"
    if kwargs.get("type") is bool:
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    return click.option(
        flag,
        name,
        envvar=f"FUSEML_{name.upper()}",
        default=default,
        callback=_empty_is_default(default),
        show_envvar=True,
        show_default=default is not None,
        **kwargs,
    )


codeset_argument = click.argument(
    "codeset", type=click.Path(path_type=Path, file_okay=False), envvar="FUSEML_CODESET_PATH",
    default="/project",
)


def hosts(text: str) -> tuple[str, ...]:
    """A comma-separated list (insecure_registries, dependency_groups), blanks dropped."""
    return tuple(host.strip() for host in text.split(",") if host.strip())


def write_results(environ: dict[str, str], *results: tuple[Path | None, str, str]) -> None:
    """Each (file flag, result variable, value): the value goes to the flag's file and to the
    step result the variable names (``result_path``); all files are written or none."""
    outputs: dict[Path, str] = {}
    for path, variable, value in results:
        outputs.update({target: value for target in (path, result_path(environ, variable))
                        if target})
    write_outputs(outputs)
