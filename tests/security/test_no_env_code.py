"""Issue 28, point 1: no code of the environment being built runs on the build host. A wheel
whose ``.pth`` file writes ``os.environ`` to a marker file (it runs whenever the environment's
interpreter starts with ``site``) is built into an image by the direct builder, with a tracking
token, AWS keys, a registry password and an index password in the build's environment: the
marker never appears, no secret is printed, pushed or left in the steps cache, and the SBOM
and lock, made from the distributions' metadata, still list the wheel."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from support.helpers import basic, docker_config, make_wheel
from support.index_server import local_index
from support.synthetic_base import build

from mlflow_steps.build.direct.installed import distributions, unmet_requirements
from mlflow_steps.env.installer import uv_binary
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.platforms import environment_markers

PROBE = "mls_pth_probe"
SECRETS = {"MLFLOW_TRACKING_TOKEN": "tracking-token-7f3a9c",
           "AWS_SECRET_ACCESS_KEY": "aws-secret-key-51d2e8",
           "AWS_ACCESS_KEY_ID": "AKIAPROBE51D2E8"}
INDEX_PASSWORD = "index-pass-93be41"
REGISTRY_PASSWORD = "registry-pass-c80d17"


def probe_index(root: Path, marker: Path) -> Path:
    """A PEP 503 tree with the probe wheel: its ``.pth`` writes the environment to
    ``marker``."""
    project = root / "simple" / PROBE.replace("_", "-")
    project.mkdir(parents=True)
    hook = (f"import os, pathlib; pathlib.Path({str(marker)!r})"
            f".write_text(repr(dict(os.environ)))\n")
    wheel = make_wheel(project, PROBE, "1.0", {f"{PROBE}.py": b"VALUE = 1\n",
                                               f"{PROBE}.pth": hook.encode()})
    (project / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    return wheel


def test_the_probe_runs_whenever_its_environment_interpreter_starts(tmp_path: Path) -> None:
    """The control: the probe's .pth is live (the test below would see its marker)."""
    marker = tmp_path / "marker"
    wheel = probe_index(tmp_path / "index", marker)
    uv, venv = str(uv_binary()), tmp_path / "venv"
    env = {**os.environ, "UV_NO_PROGRESS": "1"}
    subprocess.run([uv, "venv", "--quiet", str(venv)], check=True, env=env, timeout=120)
    subprocess.run([uv, "pip", "install", "--quiet", "--offline", "--python",
                    str(venv / "bin" / "python"), str(wheel)], check=True, env=env, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-c", "pass"], check=True,
                   env={**env, **SECRETS}, timeout=60)
    assert SECRETS["MLFLOW_TRACKING_TOKEN"] in marker.read_text()


def _image_files(client: RegistryClient, reference: str) -> tuple[list[bytes], dict[str, bytes]]:
    """Every blob of the pushed image (layers decompressed) and the record's files."""
    repository, tag = reference.split("/", 1)[1].rsplit(":", 1)
    _, manifest = client.manifest(repository, tag)
    blobs = [client.blob(repository, manifest["config"]["digest"], 1 << 20)]
    record: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        data = gzip.decompress(client.blob(repository, layer["digest"], 1 << 30))
        blobs.append(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.name.startswith("opt/mlflow-steps-build/") and member.isfile():
                    record[member.name] = tar.extractfile(member).read()
                elif member.name.endswith(f"site-packages/{PROBE}.pth"):
                    record[member.name] = b"installed"
    return blobs, record


def test_a_direct_build_runs_no_code_of_the_environment(
        registry, synthetic_base, no_engine, codeset, warm_cache, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    probe_index(tmp_path / "index", marker)
    project = codeset({"requirements.txt": f"{PROBE}==1.0\n"})
    auths = {registry.address: {"auth": basic("builder", REGISTRY_PASSWORD)}}
    cache = Path(warm_cache(tmp_path / "steps-cache"))  # the probe's layer is made here
    with local_index(tmp_path / "index") as url:
        index = url.replace("http://", f"http://builder:{INDEX_PASSWORD}@")
        env = {**no_engine, **SECRETS, "PIP_EXTRA_INDEX_URL": index,
               "DOCKER_CONFIG": str(docker_config(tmp_path / "docker", auths)),
               "MLFLOW_STEPS_CACHE": str(cache)}
        result = build(project, registry, synthetic_base, "direct/no-env-code", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "does not apply" not in result.stderr
    assert not marker.exists(), "the environment's .pth ran on the build host"

    secrets = [*SECRETS.values(), INDEX_PASSWORD, REGISTRY_PASSWORD]
    assert not [s for s in secrets if s in result.stdout + result.stderr]
    blobs, record = _image_files(RegistryClient(registry.address), result.stdout.strip())
    assert not [s for s in secrets if any(s.encode() in blob for blob in blobs)]
    left = [path for path in cache.rglob("*") if path.is_file()]
    assert not [(p, s) for p in left for s in secrets if s.encode() in p.read_bytes()]

    assert any(name.endswith(f"{PROBE}.pth") for name in record)  # it is in the image
    lock = record["opt/mlflow-steps-build/lock.txt"].decode()
    assert "mls-pth-probe==1.0" in [line.split(" ")[0] for line in lock.splitlines()], lock
    sbom = json.loads(record["opt/mlflow-steps-build/sbom.cdx.json"])
    assert (sbom["bomFormat"], sbom["specVersion"]) == ("CycloneDX", "1.6")
    components = {c["name"]: c for c in sbom["components"]}
    assert components[PROBE]["version"] == "1.0"
    assert components[PROBE]["purl"] == "pkg:pypi/mls-pth-probe@1.0"
    assert {"mlflow-steps", "mlflow-skinny"} <= set(components)
    tooling = components["mlflow-steps"]["bom-ref"]
    needs = next(d.get("dependsOn", []) for d in sbom["dependencies"] if d["ref"] == tooling)
    assert any(ref.startswith("boto3==") for ref in needs)


def _dist_info(site: Path, name: str, version: str, *requires: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))


def test_the_tooling_check_reads_requirements_for_the_image_platform(tmp_path: Path) -> None:
    """The check that replaced `uv pip check` (which starts the environment's interpreter):
    missing and mismatched requirements, extras followed, markers evaluated for the image's
    Python and machine, not this one's."""
    site = tmp_path / "site-packages"
    _dist_info(site, "tool", "1.0", "dep>=2", "extra-dep[fast]", "absent",
               'arm-only; platform_machine == "aarch64"', 'old-only; python_version < "3.9"',
               'new-only; python_version >= "3.12"')
    _dist_info(site, "dep", "1.5")
    _dist_info(site, "extra_dep", "1.0", 'speedup>=4; extra == "fast"', 'slow; extra == "slow"')
    _dist_info(site, "speedup", "3.1")
    markers = environment_markers("3.12.1", "x86_64")
    assert unmet_requirements(distributions(site), markers) == [
        'extra_dep requires speedup>=4; extra == "fast", but 3.1 is installed',
        "tool requires absent, which is not installed",
        "tool requires dep>=2, but 1.5 is installed",
        'tool requires new-only; python_version >= "3.12", which is not installed']
    assert unmet_requirements(distributions(site), environment_markers("3.11.2", "aarch64")) == [
        'extra_dep requires speedup>=4; extra == "fast", but 3.1 is installed',
        "tool requires absent, which is not installed",
        'tool requires arm-only; platform_machine == "aarch64", which is not installed',
        "tool requires dep>=2, but 1.5 is installed"]
