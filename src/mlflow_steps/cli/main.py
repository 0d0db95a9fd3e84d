"""`mlflow-steps` command line: one subcommand per step; inputs map to flags and FUSEML_* vars.

The group and what every command shares (the network budget, one-line failures, exit codes);
each command lives in the module of what the user does (`build`, `image`, `runtime`,
`server`, `workflow`) and is imported only when it runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from typing import NoReturn

import click

from mlflow_steps import __version__
from mlflow_steps.core.deadline import DEFAULT_BUDGET_SECONDS
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.interrupt import Interrupted, exit_now
from mlflow_steps.core.redaction import secret_values
from mlflow_steps.core.retry import BUDGET_VARIABLE
from mlflow_steps.core.terminal import shown

DEBUG_VARIABLE = "MLFLOW_STEPS_DEBUG"

# Command name -> "module:attribute". A command's module is imported only when that command
# runs (the builder's skip path must not pay for MLflow, jinja2 or the engines); server and
# workflow are not in trainer images, so their commands exist only where they are installed.
COMMANDS = {"hash": "mlflow_steps.cli.build:hash_command",
            "render": "mlflow_steps.cli.build:render_command",
            "build": "mlflow_steps.cli.build:build_command",
            "inspect": "mlflow_steps.cli.image:inspect_command",
            "trace": "mlflow_steps.cli.runtime:trace_command",
            "run": "mlflow_steps.cli.runtime:run_command",
            "serve": "mlflow_steps.cli.runtime:serve_command",
            "server": "mlflow_steps.cli.server:server",
            "workflow": "mlflow_steps.cli.workflow:workflow_group",
            "env": "mlflow_steps.cli.workflow:env_command"}


class StepsGroup(click.Group):
    """The COMMANDS whose module is installed, each imported when asked for."""

    @staticmethod
    def _module(name: str) -> str | None:
        target = COMMANDS.get(name)
        module = target and target.split(":")[0]
        return module if module and importlib.util.find_spec(module) is not None else None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._module(name))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self._module(cmd_name)
        if module is None:
            return None
        return getattr(importlib.import_module(module), COMMANDS[cmd_name].split(":")[1])


def _finite(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds", param=param)
    return value


@click.group(cls=StepsGroup)
@click.version_option(__version__, prog_name="mlflow-steps")
@click.option("--network-timeout", type=click.FloatRange(0, 3600, min_open=True),
              envvar=BUDGET_VARIABLE, show_envvar=True, callback=_finite,
              help=f"Seconds any server (registry, tracking server) may take to answer, "
                   f"retries included [default: {DEFAULT_BUDGET_SECONDS:.0f}].")
def cli(network_timeout: float | None) -> None:
    """Build and run MLflow projects as FuseML-compatible workflow steps."""
    if network_timeout is not None:  # every command reads the budget from the environment
        os.environ[BUDGET_VARIABLE] = f"{network_timeout:g}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is one line on stderr (credentials masked, control
    characters escaped); bad input exits 2."""
    try:
        cli.main(args=argv, prog_name="mlflow-steps", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except Interrupted as exc:
        exit_now(exc.signum)
    except Exception as exc:  # one line, never a traceback (it could print a secret)
        message, code = _failure(exc)
        _fail(f"error: {message}", code)


def _failure(exc: Exception) -> tuple[str, int]:
    """The line and exit code for an exception escaping a command."""
    if isinstance(exc, StepError):
        return str(exc), exc.exit_code
    if isinstance(exc, click.ClickException):
        return exc.format_message(), exc.exit_code
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}", 2
    if isinstance(exc, ImportError):
        return (f"Python module {exc.name!r} is not installed here (needed by this store or "
                "feature): pip install it", 2)
    if type(exc).__module__.startswith("mlflow."):
        from mlflow_steps.runtime.tracking import mlflow_error_line  # MLflow's errors only

        return f"mlflow: {mlflow_error_line(exc)}", 2
    if os.environ.get(DEBUG_VARIABLE):
        raise exc
    first = (str(exc).strip().splitlines() or [""])[0]
    return (f"internal error, please report it (set {DEBUG_VARIABLE}=1 for the traceback): "
            f"{type(exc).__name__}: {first}", 1)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"mlflow-steps: {shown(message, secret_values(os.environ))}", err=True)
    sys.exit(code)
