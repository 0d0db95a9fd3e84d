"""The README's and docs/*.md's commands run as written, and their links lead somewhere.

Every `mlflow-steps` command in a page's shell blocks that needs no running service (hash,
render, validate, export, runs, env) is run verbatim with bash in a scratch copy of the
repository's examples and workflows (one per page); the others (build, run, serve, workflow
run, server) need an engine, registry or tracking server and run in the end-to-end tests,
so here every flag they use must exist in their `--help`. Every relative link names an
existing file, and a `#heading` in it one of that page's headings; docs/architecture.md
lists exactly the package's modules.
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
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def shell_commands(page: Path) -> list[str]:
    """Shell commands of the page's ```sh blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", page.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def subcommand(command: str) -> str | None:
    match = re.search(r"mlflow-steps ((?:workflow |server )?[a-z-]+)", command)
    return match.group(1) if match else None


def test_offline_commands_run_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ran = []
    for page in PAGES:
        scratch = tmp_path / page.stem
        for folder in ("examples", "workflows"):
            shutil.copytree(REPO / folder, scratch / folder)
        for command in shell_commands(page):
            if subcommand(command) not in OFFLINE or "..." in command:
                continue
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command], cwd=scratch, capture_output=True,
                env={**env, "MLFLOW_STEPS_RUNS_DIR": str(scratch / "runs")}, text=True,
                timeout=120, check=False)
            assert result.returncode == 0, f"{page.name}: {command}\n{result.stderr[-2000:]}"
            ran.append(f"{page.name}: {command}")
    assert "README.md: mlflow-steps workflow export workflows/mlflow-e2e.yaml --tekton -o " \
           "out/tekton" in ran
    assert (tmp_path / "README" / "out" / "tekton" / "task-builder.yaml").is_file()
    assert len(ran) >= 12, ran


def test_every_flag_of_the_other_commands_exists() -> None:
    checked = 0
    for page in PAGES:
        for command in shell_commands(page):
            name = subcommand(command)
            if name is None or name in OFFLINE:
                continue
            words = command[command.index("mlflow-steps "):].split()
            help_text = subprocess.run(
                [sys.executable, "-m", "mlflow_steps", *name.split(), "--help"],
                capture_output=True, text=True, check=True, timeout=60).stdout
            for flag in (w.split("=")[0] for w in words if w.startswith("--")):
                assert flag in help_text, f"{page.name}: {command}: {flag} is not an option"
            checked += 1
    assert checked >= 6


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_relative_links_name_existing_files_and_headings() -> None:
    broken, checked = [], 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            checked += 1
            if not linked.exists():
                broken.append(f"{page.name}: {target}: no such file")
            elif anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target}: no such heading")
    assert not broken, "\n".join(broken)
    assert checked >= 20


def test_the_architecture_page_lists_every_module_and_no_other() -> None:
    package = REPO / "src" / "mlflow_steps"
    modules = {str(path.relative_to(package)) for path in package.rglob("*.py")
               if path.name != "__init__.py"}
    listed = set(re.findall(r"^- `([\w/]+\.py)`:", (REPO / "docs" / "architecture.md").read_text(),
                            flags=re.M))
    assert not modules - listed, f"not in docs/architecture.md: {sorted(modules - listed)}"
    assert not listed - modules, f"gone from the package: {sorted(listed - modules)}"
