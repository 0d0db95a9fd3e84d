"""Options every command shares."""

from __future__ import annotations

import pytest
from helpers import EXAMPLE, run_cli


@pytest.mark.parametrize("args, env", [
    (["--network-timeout", "0"], {}), (["--network-timeout", "nan"], {}),
    (["--network-timeout", "1e9"], {}), ([], {"MLFLOW_STEPS_NETWORK_TIMEOUT": "soon"}),
])
def test_network_timeout_is_validated(args: list[str], env: dict[str, str]) -> None:
    import os

    result = run_cli(*args, "hash", str(EXAMPLE), env={**os.environ, **env})
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "--network-timeout" in lines[0], result.stderr
