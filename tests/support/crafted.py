"""Shared by the security tests: crafted image parts, and the real entry point in-process."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from mlflow_steps.cli.main import main

LOCK = "opt/mlflow-steps/lock.txt"
SBOM = "opt/mlflow-steps/sbom.json"


def config(labels: object = None, **extra: object) -> bytes:
    """An image config with a runtime image's labels (or ``labels`` as given)."""
    if labels is None:
        labels = {"io.mlflow-steps.env-tag": "abc123", "io.mlflow-steps.lock": f"/{LOCK}",
                  "io.mlflow-steps.sbom": f"/{SBOM}"}
    return json.dumps({"architecture": "amd64", "os": "linux",
                       "config": {"Labels": labels}, **extra}).encode()


def layer(files: dict[str, bytes]) -> bytes:
    """A gzipped layer tar holding ``files``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`mlflow-steps ARGV` through the real entry point, in this process: exit code, stdout,
    stderr."""
    code: int | str | None = 0
    try:
        main(list(argv))
    except SystemExit as exited:
        code = exited.code
    out, err = capsys.readouterr()
    return code if isinstance(code, int) else int(code is not None), out, err
