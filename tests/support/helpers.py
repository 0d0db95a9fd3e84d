"""Helpers shared by test modules (importable as `helpers`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sklearn-logreg"
# Two iris rows the example's model classifies as [0, 2].
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
MINIMAL_MLPROJECT = "name: demo\nentry_points:\n  main:\n    command: python train.py\n"


def write_codeset(root: Path, files: dict[str, str | bytes]) -> Path:
    """Create a codeset from {relative path: content}."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real `mlflow-steps` console entry in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "mlflow_steps", *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )


def push_tiny_image(base_url: str, repository: str, tag: str, *, auth=None, verify=True,
                    headers: dict[str, str] | None = None, config: bytes = b"{}",
                    layers: tuple[bytes, ...] = ()) -> str:
    """Upload a minimal OCI image over the registry API: ``config`` and ``layers`` as given
    (default: an empty config, no layers); the manifest's digest."""
    import hashlib
    import json

    import requests

    kwargs = {"auth": auth, "verify": verify, "headers": dict(headers or {}), "timeout": 10}

    def upload(blob: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        response = requests.post(f"{base_url}/v2/{repository}/blobs/uploads/", **kwargs)
        assert response.status_code == 202, response.text
        location = response.headers["Location"]
        location = location if location.startswith("http") else base_url + location
        separator = "&" if "?" in location else "?"
        response = requests.put(f"{location}{separator}digest={digest}", data=blob, **{
            **kwargs, "headers": {**kwargs["headers"],
                                  "Content-Type": "application/octet-stream"}})
        assert response.status_code == 201, response.text
        return digest

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": upload(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": upload(layer), "size": len(layer)} for layer in layers]}).encode()
    response = requests.put(f"{base_url}/v2/{repository}/manifests/{tag}", data=manifest, **{
        **kwargs, "headers": {**kwargs["headers"],
                              "Content-Type": "application/vnd.oci.image.manifest.v1+json"}})
    assert response.status_code == 201, response.text
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def make_wheel(directory: Path, name: str, version: str, files: dict[str, bytes],
               tag: str = "py3-none-any") -> Path:
    """A wheel of ``files`` (with METADATA, WHEEL and RECORD) for platform ``tag``."""
    import zipfile

    from mlflow_steps.build.image_plan import record_hash

    info = f"{name}-{version}.dist-info"
    files = {**files,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
             .encode(),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: "
             f"{'true' if tag.endswith('-any') else 'false'}\nTag: {tag}\n".encode()}
    record = [f"{path},{record_hash(data)},{len(data)}" for path, data in files.items()]
    record.append(f"{info}/RECORD,,")
    wheel = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def tiny_wheel(directory: Path, name: str = "tiny_conda_probe", version: str = "1.0") -> Path:
    """A pure wheel made here (module ``name`` with VALUE = 42), installable without an
    index."""
    return make_wheel(directory, name, version, {f"{name}.py": b"VALUE = 42\n"})


def basic(user: str, password: str) -> str:
    """The ``auth`` value of a docker config.json entry."""
    import base64

    return base64.b64encode(f"{user}:{password}".encode()).decode()


def docker_config(directory: Path, auths: dict[str, dict[str, str]], **extra) -> Path:
    """Write a Docker config.json and return its directory (the DOCKER_CONFIG value)."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"auths": auths, **extra}))
    return directory


def predictions(url: str) -> list[int]:
    """POST the iris rows to an MLflow scoring server's /invocations URL."""
    import requests

    answer = requests.post(url, json={"inputs": IRIS_ROWS}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]
