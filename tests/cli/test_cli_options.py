"""Options every command shares."""

from __future__ import annotations

import pytest
from support.helpers import EXAMPLE, run_cli


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


# What the builder's skip decision may not load: it runs at every workflow run, so its cost
# is the interpreter, parsing the environment files and one manifest HEAD.
SKIP_PATH_NEVER_IMPORTS = ("mlflow", "jinja2", "conda_lock", "rattler", "docker", "tarfile",
                           "requests",
                           "mlflow_steps.build.dockerfile", "mlflow_steps.build.engines.engine",
                           "mlflow_steps.build.direct", "mlflow_steps.image.diff",
                           "mlflow_steps.build.image_plan")
_LIST_MODULES = """\
import atexit, json, sys
listing = sys.argv.pop(1)
atexit.register(lambda: open(listing, "w").write(json.dumps(sorted(sys.modules))))
from mlflow_steps.cli.main import main
main()
"""


def test_skip_decision_imports_no_engine_template_or_mlflow(registry, tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    from support.helpers import push_tiny_image

    env = {**os.environ, "FUSEML_REGISTRY": registry.address, "FUSEML_REPOSITORY": "skip/imports",
           "FUSEML_BUILDER": "docker", "DOCKER_HOST": "unix:///nonexistent.sock"}
    tag = run_cli("hash", str(EXAMPLE), env=env).stdout.strip()
    push_tiny_image(registry.url, "skip/imports", tag)
    listing = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", _LIST_MODULES, str(listing), "build",
                             str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0 and "build skipped" in result.stderr, result.stderr
    loaded = json.loads(listing.read_text())
    assert "mlflow_steps.image.client" in loaded  # the listing is the skip's own
    assert not [name for name in loaded if name in SKIP_PATH_NEVER_IMPORTS
                or name.startswith(tuple(f"{never}." for never in SKIP_PATH_NEVER_IMPORTS))]
