"""README commands run as written.

Every `mlflow-steps` command in the README's shell blocks that needs no running service
(hash, render, validate, export, runs, env) is run verbatim with bash in a scratch copy of
the repository's examples and workflows; the others (build, run, serve, workflow run,
server) need an engine, registry or tracking server and run in the end-to-end tests, so
here every flag they use must exist in their `--help`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from support.helpers import REPO

OFFLINE = ("hash", "render", "workflow validate", "workflow export", "workflow runs", "env")


def readme_commands() -> list[str]:
    """Shell commands of the README's ```sh blocks, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def subcommand(command: str) -> str | None:
    match = re.search(r"mlflow-steps ((?:workflow |server )?[a-z-]+)", command)
    return match.group(1) if match else None


def test_offline_readme_commands_run_as_written(tmp_path: Path) -> None:
    for folder in ("examples", "workflows"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_STEPS_RUNS_DIR": str(tmp_path / "runs")}
    ran = []
    for command in readme_commands():
        if subcommand(command) not in OFFLINE or "..." in command:
            continue
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=120,
                                check=False)
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
        ran.append(command)
    assert any("workflow export workflows/mlflow-e2e.yaml --tekton -o out/tekton" in c
               for c in ran)
    assert len(ran) >= 8, ran
    assert (tmp_path / "out" / "tekton" / "task-builder.yaml").is_file()


def test_every_flag_of_the_other_readme_commands_exists() -> None:
    checked = 0
    for command in readme_commands():
        name = subcommand(command)
        if name is None or name in OFFLINE:
            continue
        words = command[command.index("mlflow-steps "):].split()
        help_text = subprocess.run(
            [sys.executable, "-m", "mlflow_steps", *name.split(), "--help"],
            capture_output=True, text=True, check=True, timeout=60).stdout
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert flag in help_text, f"{command}: {flag} is not an option of {name}"
        checked += 1
    assert checked >= 3
