"""A conda environment in the direct builder's staging tree: its conda packages, installed by
rattler for the image's platform as the image's env prefix (nothing of them runs), and its
record: the conda packages first, then the Python distributions, as a Dockerfile build
merges them (``conda_record``)."""

from __future__ import annotations

from pathlib import Path

from mlflow_steps.build import conda_record
from mlflow_steps.build.conda_install import CondaChannels, stage_environment, write_conda_record
from mlflow_steps.build.direct import NotApplicable
from mlflow_steps.build.image_plan import ImagePlan


def install_conda_packages(plan: ImagePlan, prefix: Path, platform: str,
                           environ: dict[str, str], alias: str | None) -> str:
    """Install the plan's conda packages for ``platform`` into ``prefix`` (``alias``: the
    channel alias asked for, else the configured one); the version of their ``python``."""
    records = stage_environment(plan.install, prefix, plan.env_prefix,
                                CondaChannels.collect(environ, alias), environ, platform)
    python = next((record for record in records if record.get("name") == "python"), None)
    if python is None:
        raise NotApplicable("its conda packages include no python")
    return str(python["version"])


def write_conda_lock(prefix: Path, work: Path, frozen: Path, lock: Path, sbom: Path,
                     pip_part: Path) -> None:
    """``lock``: the conda packages installed in ``prefix``, then ``frozen`` (uv's freeze);
    their components added to the SBOM ``sbom``; ``pip_part``: what pip installed (for the
    PEP 751 record). ``work`` holds the conda record meanwhile."""
    record = work / "conda-record"
    write_conda_record(prefix, record)
    conda_record.merge(record, frozen, lock, sbom, pip_part, prefix)
