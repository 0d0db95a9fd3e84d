"""The staged environment's record files, as the Dockerfile path records them: the env files,
lock.txt (hashed with uv; a conda environment's conda packages first), sbom.cdx.json and
the PEP 751 pylock.toml of what pip installed."""

from __future__ import annotations

from pathlib import Path

from mlflow_steps.build.direct import NotApplicable
from mlflow_steps.build.direct.conda_env import write_conda_lock
from mlflow_steps.build.direct.install import StagedEnv, Stager, leaked_paths
from mlflow_steps.build.direct.installed import distributions, sbom_json
from mlflow_steps.build.image_plan import TOOLING_DIST
from mlflow_steps.core import interrupt
from mlflow_steps.core.errors import StepError
from mlflow_steps.env.hashing import SOURCE_DATE_EPOCH


def write_record(staged: StagedEnv) -> Path:
    """The plan's record files: the env files, lock.txt and sbom.cdx.json (the conda
    packages first, if any), pylock.toml, as the Dockerfile path records them; the record
    directory."""
    stager, files = staged.stager, staged.plan.record
    record = staged.root / files.directory.lstrip("/")
    staged.plan.install.write(staged.root / files.env_dir.lstrip("/"), files.env_dir,
                              mkdir_parents=True)
    lock, sbom = (staged.root / path.lstrip("/") for path in (files.lock, files.sbom))
    sbom.write_text(sbom_json(distributions(staged.site_packages), SOURCE_DATE_EPOCH))
    frozen = staged.work / "installed.txt"
    frozen.write_text(staged.frozen)
    # the PEP 751 lock is the environment's, for any machine: not the step tooling's wheel,
    # nor what conda installed
    environment = staged.work / "environment.txt"
    if staged.conda:
        write_conda_lock(staged.prefix, staged.work, frozen, lock, sbom, environment)
        pylock = _compile_installed(stager, ["--format", "pylock.toml", str(environment)],
                                    "writing the pip-installed packages as pylock.toml")
        texts = {files.lock: lock.read_text(), files.pylock: pylock}
    else:
        environment.write_text("".join(
            line for line in staged.frozen.splitlines(keepends=True)
            if not line.lower().startswith(f"{TOOLING_DIST} @")))
        with interrupt.ThreadPool(max_workers=1) as other:  # both may ask the index
            pylock_job = other.submit(
                _compile_installed, stager, ["--format", "pylock.toml", str(environment)],
                "writing the installed packages as pylock.toml")
            hashed = _compile_installed(stager, ["--no-annotate", "--generate-hashes",
                                                 str(frozen)], "hashing the installed packages")
        texts = {files.lock: hashed, files.pylock: pylock_job.result()}
    frozen.unlink()
    environment.unlink()
    for path, text in texts.items():
        (staged.root / path.lstrip("/")).write_text(text.replace(str(staged.inputs),
                                                                 files.directory))
    problem = leaked_paths(staged.root, [p for p in record.rglob("*") if p.is_file()],
                           staged.staging_paths)
    if problem:
        raise NotApplicable(problem)
    return record


def _compile_installed(stager: Stager, arguments: list[str], what: str) -> str:
    """``uv pip compile`` of installed pins for the image: from uv's cache first, that is the
    index pages the install resolved with (what was installed, hashes as published then; no
    round trip, and no index that has changed since, or serves another page, to disagree),
    else from the index."""
    command = [stager.uv, "pip", "compile", "--quiet", "--no-header", "--no-deps", "--python",
               stager.python, *stager.targeted()]
    try:
        return stager.run([*command, "--offline", *arguments], what, fallback=False)
    except StepError:  # not all in the cache (a package cache of its own, pruned meanwhile)
        return stager.run([*command, *arguments], what, fallback=False)
