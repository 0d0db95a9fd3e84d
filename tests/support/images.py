"""Small images made from layers written here."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from mlflow_steps.image.layers import rewrite
from mlflow_steps.image.push import Blob

EPOCH = 315_600_000


def layer(tmp_path: Path, name: str, files: dict[str, bytes]) -> Blob:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:") as source:
        built = rewrite(source, source.getmembers(), tmp_path / f"{name}.tgz", EPOCH)
    return Blob(built.descriptor(), path=built.path)


def image(tmp_path: Path, model: bytes = b"weights v1") -> tuple[dict, list[Blob]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    layers = [layer(tmp_path, "base", {"etc/os-release": b"ID=debian\n"}),
              layer(tmp_path, "env", {"opt/env/model.bin": model, "opt/env/a.py": b"a = 1\n"})]
    config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/opt/env/bin"]},
              "rootfs": {"type": "layers", "diff_ids": []}}
    return config, layers


EPOCH = 315_600_000
