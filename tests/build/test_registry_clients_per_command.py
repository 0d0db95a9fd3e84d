"""One registry client per registry host per command: the skip decision, the base's digest
label and the build's push share the command's client (issue 29), so a token or a TLS
fallback is learnt once. The commands run in-process (click's CliRunner) to count."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_steps.cli.main import cli
from mlflow_steps.image.client import RegistryClient


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """The registry hosts of the RegistryClients made, each counted once per client."""
    hosts: collections.Counter[str] = collections.Counter()
    init = RegistryClient.__init__

    def counting(self: RegistryClient, host: str, **options: object) -> None:
        hosts[host] += 1
        init(self, host, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(RegistryClient, "__init__", counting)
    return hosts


def test_a_direct_build_and_its_skip_make_one_client_per_registry(
        registry, synthetic_base, no_engine, codeset, warm_cache, made, tmp_path: Path
) -> None:
    project = codeset({"requirements.txt": "six==1.16.0\n"})
    args = ["build", str(project), "--builder", "direct", "--registry", registry.address,
            "--base-image", synthetic_base, "--repository", "clients/one"]
    # warm_cache is set up before made: its session build's clients are not counted
    env = {**no_engine, "MLFLOW_STEPS_CACHE": warm_cache(tmp_path / "cache")}
    built = CliRunner().invoke(cli, args, env=env)
    assert built.exit_code == 0, built.output[-3000:]
    assert "does not apply" not in built.stderr
    assert made == {registry.address: 1}  # the base is in the same registry
    made.clear()
    skipped = CliRunner().invoke(cli, args, env=env)
    assert skipped.exit_code == 0 and "build skipped" in skipped.stderr, skipped.output
    assert skipped.stdout == built.stdout and made == {registry.address: 1}
