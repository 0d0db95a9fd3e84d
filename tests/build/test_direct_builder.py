"""The engine-free builder (`--builder direct`): real uv installs, real registries; the images
it makes run on a real engine; where it cannot build safely it falls back with one line.
(The builder image builds this way, unprivileged and with no engine, in test_builder_image;
the local runner's workflows build, train and serve the example with it.)"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import tarfile
from pathlib import Path

from support.helpers import (
    EXAMPLE,
    MINIMAL_MLPROJECT,
    REPO,
    basic,
    docker_config,
    make_wheel,
    pushed_image,
    run_cli,
    write_codeset,
)
from support.hostile_registry import HostileRegistry
from support.index_server import local_index
from support.synthetic_base import (
    PASSWD,
    build,
    elf_needing,
    push_synthetic_base,
)

from mlflow_steps.build.direct.assemble import user_layer
from mlflow_steps.build.direct.base_image import load_base, read_facts
from mlflow_steps.build.direct.elf import needed_libraries
from mlflow_steps.build.direct.install import leaked_paths
from mlflow_steps.build.image_plan import DEFAULT_PATH, RuntimeUser
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.layers import GZIP_MEMBER, Entry, write_layer


def test_base_facts_follow_whiteouts_links_and_path(tmp_path: Path) -> None:
    def layer(name: str, entries: list[Entry]) -> Path:
        write_layer(entries, tmp_path / name, 0)
        return tmp_path / name

    first = layer("1.tar", [  # facts after the first gzip member (tarfile's "r|gz" stops)
        Entry("etc/big.bin", "file", data=random.Random(3).randbytes(GZIP_MEMBER + 1)),
        Entry("usr/local/bin/python3.10", "file", data=b""),
        Entry("usr/bin/python3.12", "file", data=b""),
        Entry("usr/lib/libGL.so.1", "file", data=b""),
        Entry("lib", "symlink", target="usr/lib"),
        Entry("usr/lib/x86_64-linux-gnu/libc.so.6", "file",
              data=b"GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36.\n"),
        Entry("etc/passwd", "file", data=PASSWD.encode(), mode=0o644)])
    second = layer("2.tar", [Entry("usr/lib/.wh.libGL.so.1", "file", data=b""),
                             Entry("usr/local/bin/.wh..wh..opq", "file", data=b"")])
    config = {"config": {"Env": ["PATH=/usr/local/bin:/usr/bin", "PYTHON_VERSION=3.12.7"]}}
    facts = read_facts([first, second], config)
    assert facts["interpreters"] == {"3.12": "/usr/bin/python3.12"}  # 3.10 whited out
    assert facts["python_versions"] == {"3.12": "3.12.7"}
    assert (facts["libc"], facts["glibc_version"]) == ("glibc", "2.36")
    assert "libGL.so.1" not in facts["libraries"] and "libc.so.6" in facts["libraries"]
    assert facts["accounts"]["etc/passwd"]["text"] == PASSWD


def test_needed_libraries_are_read_from_elf(tmp_path: Path) -> None:
    (tmp_path / "x.so").write_bytes(elf_needing("libGL.so.1"))
    (tmp_path / "y.so").write_bytes(b"not an elf")
    assert needed_libraries(tmp_path / "x.so") == ["libGL.so.1"]
    assert needed_libraries(tmp_path / "y.so") == []


def test_staging_paths_left_in_written_files_are_found(tmp_path: Path) -> None:
    """A file written while staging (one link) or a symbolic link naming the staging path is
    found; a file hard-linked from uv's cache is the wheel's as published and is not read."""
    staging = str(tmp_path / "work")
    cache, root = tmp_path / "uv-cache", tmp_path / "work" / "root"
    cache.mkdir()
    root.mkdir(parents=True)
    (cache / "data.txt").write_text(f"a wheel that happens to say {staging}")
    os.link(cache / "data.txt", root / "linked.txt")
    (root / "ok.py").write_text("print('/opt/env')\n")
    assert leaked_paths(root, [root / "linked.txt", root / "ok.py"], (staging,)) is None
    (root / "script").write_text(f"#!{staging}/root/opt/env/bin/python\n")
    assert leaked_paths(root, [root / "ok.py", root / "script"], (staging,)) == (
        "script names the staging path")
    (root / "python").symlink_to(f"{staging}/root/usr/bin/python3")
    assert leaked_paths(root, [root / "python"], (staging,)) == (
        "python links into the staging path")


def test_user_layer_adds_the_runtime_user_as_useradd_does(registry, synthetic_base,
                                                         tmp_path: Path) -> None:
    base = load_base(synthetic_base, RegistryClient(registry.address), tmp_path)
    entries = {e.name: e for e in user_layer(base, RuntimeUser()).entries}
    passwd = entries["etc/passwd"].data
    assert isinstance(passwd, bytes) and passwd.decode() == PASSWD + (
        "mlflow:x:1000:1000::/home/mlflow:/bin/sh\n")
    assert (entries["home/mlflow"].uid, entries["srv/mlflow"].uid) == (1000, 1000)
    assert "etc/shadow" not in entries  # the base has none: none is made


def test_direct_build_on_a_synthetic_base_is_deterministic_and_skips(
        registry, synthetic_base, no_engine, codeset, warm_cache, tmp_path: Path) -> None:
    """The first build reuses the session's layers (made from scratch once), the last makes
    every layer again from scratch, with a package cache of its own: the same image."""
    project = codeset({"requirements.txt": "six==1.16.0\n"})
    first = build(project, registry, synthetic_base, "direct/synthetic",
                  env={**no_engine, "MLFLOW_STEPS_CACHE": warm_cache(tmp_path / "cache-1")})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "does not apply" not in first.stderr
    reference = first.stdout.strip()
    client = RegistryClient(registry.address)
    repository, digest, manifest, config = pushed_image(client, reference)
    tag = reference.rsplit(":", 1)[1]
    assert config["config"]["User"] == "1000" and config["config"]["WorkingDir"] == "/srv/mlflow"
    assert "PATH=/opt/env/bin:/usr/local/bin:/usr/bin:/bin" in config["config"]["Env"]
    assert config["config"]["Labels"]["io.mlflow-steps.env-tag"] == tag
    names = _layer_names(client, repository, manifest)
    assert "opt/env/bin/python" in names and "opt/mlflow-steps-build/lock.txt" in names
    assert "opt/mlflow-steps/bin/mlflow-steps" in names
    assert not any("/tests/" in name for name in names)

    skipped = build(project, registry, synthetic_base, "direct/synthetic", env=no_engine)
    assert skipped.returncode == 0 and "build skipped" in skipped.stderr

    # Another repository, the same cache: no layer is remade, each is mounted
    elsewhere = build(project, registry, synthetic_base, "direct/synthetic-elsewhere", "--force",
                      env={**no_engine, "MLFLOW_STEPS_CACHE": str(tmp_path / "cache-1")})
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    ours = len(manifest["layers"]) - 1
    assert f"{ours} layers ({ours} made before: not remade)" in elsewhere.stderr
    assert elsewhere.stderr.count(": mounted") == len(manifest["layers"])
    assert client.manifest("direct/synthetic-elsewhere", tag)[0] == digest

    # From scratch again (no layer cache, no package cache, another repository)
    again = build(project, registry, synthetic_base, "direct/synthetic-again", "--force",
                  env={**no_engine, "MLFLOW_STEPS_CACHE": str(tmp_path / "cache-2"),
                       "UV_CACHE_DIR": str(tmp_path / "uv-cache-2")})
    assert again.returncode == 0, again.stderr[-3000:]
    assert client.manifest("direct/synthetic-again", tag)[0] == digest


def test_direct_build_into_authenticated_registries(registry, tls_registry, token_registry,
                                                    synthetic_base, no_engine, codeset,
                                                    warm_cache, tmp_path: Path) -> None:
    """The registry auth of every backend: TLS with a custom CA and Basic auth (the base, in
    another registry, is copied over), then Bearer tokens (the base, in the same registry, is
    mounted, with pull asked for on its repository). No secret is printed. The second base's
    config has no Env at all: the image's PATH is the environment's bin, then the standard
    Linux PATH (where the base's python3.11 is found, too). (The step tooling's layers are
    the session's, put into each repository first: the auth is the point.)"""
    project = codeset({"requirements.txt": "six==1.16.0\n"})
    auths = {tls_registry.address: {"auth": basic("alice", "s3cret-pass")}}
    env = {**no_engine, "DOCKER_CONFIG": str(docker_config(tmp_path / "tls", auths))}
    env["MLFLOW_STEPS_CACHE"] = warm_cache(tmp_path / "cache", (RegistryClient(
        tls_registry.address, verify=str(tls_registry.ca_file), environ=env), "direct/tls"))
    result = build(project, tls_registry, synthetic_base, "direct/tls", "--registry-ca",
                   str(tls_registry.ca_file), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "s3cret-pass" not in result.stderr + result.stdout
    repository, tag = result.stdout.strip().split("/", 1)[1].rsplit(":", 1)
    client = RegistryClient(tls_registry.address, verify=str(tls_registry.ca_file), environ=env)
    _, manifest = client.manifest(repository, tag)
    base_layer = RegistryClient(registry.address).manifest("synthetic/python", "3.11")[1][
        "layers"][0]
    assert manifest["layers"][0]["digest"] == base_layer["digest"]
    assert client.has_blob(repository, base_layer["digest"])

    reg, tokens = token_registry
    env = {**no_engine, "DOCKER_CONFIG": str(docker_config(tmp_path / "bearer", {
        reg.address: {"auth": basic("bob", "bob-pass")}}))}
    client = RegistryClient(reg.address, environ=env)
    env["MLFLOW_STEPS_CACHE"] = warm_cache(tmp_path / "cache", (client, "direct/bearer"))
    base = push_synthetic_base(client, tmp_path / "base", env=None)
    result = build(project, reg, base, "direct/bearer", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ": mounted" in result.stderr and "bob-pass" not in result.stderr + result.stdout
    scopes = {tuple(r["scopes"]) for r in tokens.requests}
    assert ("repository:direct/bearer:pull,push", "repository:synthetic/python:pull") in scopes
    *_, config = pushed_image(client, result.stdout.strip())
    assert [e for e in config["config"]["Env"] if e.startswith("PATH=")] == [
        f"PATH=/opt/env/bin:{DEFAULT_PATH}"]


def _layer_names(client: RegistryClient, repository: str, manifest: dict) -> set[str]:
    names: set[str] = set()
    for layer in manifest["layers"][1:]:
        data = client.blob(repository, layer["digest"], 1 << 30)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names.update(tar.getnames())
    return names


def test_a_base_layer_it_cannot_read_refuses_with_one_line(registry, no_engine, codeset,
                                                           tmp_path: Path) -> None:
    """A base whose layer is zstd (the base facts are read from gzip or plain tars): the
    direct builder does not apply, and `--builder direct` says so in one line, exit 2, no
    traceback (an engine is never tried)."""
    base = push_synthetic_base(RegistryClient(registry.address), tmp_path / "base", "zstd",
                               "synthetic/zstd-python")
    project = codeset({"requirements.txt": "six==1.16.0\n"})
    result = build(project, registry, base, "direct/zstd-base",
                   env={**no_engine, "MLFLOW_STEPS_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "builder: the direct builder does not apply: the base's layer sha256-" in line
    assert "is not a tar" in line and line.endswith("(--builder auto builds it with an engine)")
    assert "Traceback" not in result.stderr


def test_an_sdist_only_dependency_falls_back_with_one_line(registry, synthetic_base, no_engine,
                                                           codeset, tmp_path: Path) -> None:
    """`--builder auto` with no engine to fall back to: one line with both reasons."""
    root = tmp_path / "index"
    project_dir = root / "simple" / "mls-sdist-probe"
    project_dir.mkdir(parents=True)
    sdist = project_dir / "mls_sdist_probe-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        data = b"from setuptools import setup\nsetup(name='mls-sdist-probe', version='1.0')\n"
        info = tarfile.TarInfo("mls_sdist_probe-1.0/setup.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (project_dir / "index.html").write_text(f'<a href="{sdist.name}">{sdist.name}</a>\n')
    project = codeset({"requirements.txt": "mls-sdist-probe\n"})
    with local_index(root) as url:
        result = build(project, registry, synthetic_base, "direct/sdist",
                       env={**no_engine, "PIP_EXTRA_INDEX_URL": url}, builder="auto")
    assert result.returncode == 2
    line = result.stderr.splitlines()[-1]
    assert "the direct builder does not apply (" in line and "mls-sdist-probe" in line
    assert "and no build engine available" in line
    assert result.stdout == "" and "Traceback" not in result.stderr


def _codeset_needing_libgl(tmp_path: Path, more_requirements: str = "") -> Path:
    """A codeset whose one local wheel holds a library that needs libGL.so.1 (which neither
    the environment nor the base provides)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    built = make_wheel(wheels, "mls_needs_gl", "1.0",
                       {"mls_needs_gl/__init__.py": b"",
                        "mls_needs_gl/_gl.so": elf_needing("libGL.so.1")},
                       "py3-none-manylinux_2_17_x86_64")
    return write_codeset(tmp_path / "codeset", {
        "MLproject": MINIMAL_MLPROJECT, f"wheels/{built.name}": built.read_bytes(),
        "requirements.txt": f"./wheels/{built.name}\n{more_requirements}"})


def test_a_missing_system_library_falls_back_to_the_engine(docker_engine, registry, base_image,
                                                           codeset, tmp_path: Path) -> None:
    project = _codeset_needing_libgl(tmp_path)
    result = run_cli("build", str(project), "--builder", "auto", "--registry",
                     registry.address, "--base-image", base_image, "--repository",
                     "direct/needs-gl", env={**os.environ, **docker_engine.env()})
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stderr.splitlines() if "does not apply" in x)
    assert line.startswith("mlflow-steps: building with docker: the direct builder does not "
                           "apply: shared libraries") and "libGL.so.1 (needed by" in line
    assert "), built by docker" in result.stderr.splitlines()[-2]
    # no layer of the direct builder's ("[push] <digest>: <how> (<layer>)") was pushed
    assert not re.search(r"^\[push\] .*\)$", result.stderr, re.M)


def test_direct_refuses_before_pushing_and_never_runs_an_engine(
        registry, synthetic_base, no_engine, tmp_path: Path) -> None:
    """A library no layer nor the base provides, asked for with `--builder direct`: exit 2,
    one line naming the reason, no blob pushed (the registry records every request), no
    step output written."""
    project = _codeset_needing_libgl(tmp_path, "six==1.16.0\n")
    output = tmp_path / "output"
    with HostileRegistry(upstream=f"http://{registry.address}") as hostile:
        result = build(project, hostile, synthetic_base, "direct/refused", "--output-file",
                       str(output), env={**no_engine,
                                         "MLFLOW_STEPS_CACHE": str(tmp_path / "cache")})
        writes = [f"{r.method} {r.path}" for r in hostile.seen if r.method in ("POST", "PUT",
                                                                               "PATCH")]
    assert result.returncode == 2 and result.stdout == "", result.stderr[-3000:]
    assert writes == [] and not output.exists()
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("mlflow-steps: error: input: builder: the direct builder does not "
                           "apply: shared libraries neither the environment nor the base "
                           "provides: libGL.so.1 (needed by lib/python3.11/site-packages/"
                           "mls_needs_gl/_gl.so)")
    assert line.endswith("(--builder auto builds it with an engine)")
    assert "Traceback" not in result.stderr and "docker" not in result.stderr.lower()


def test_zstd_layers_are_reproducible_with_oci_types(registry, synthetic_base, no_engine, codeset,
                                               tmp_path: Path) -> None:
    import zstandard

    project = codeset({"requirements.txt": "six==1.16.0\n"})
    result = build(project, registry, synthetic_base, "direct/zstd", "--compression", "zstd",
                   "--check-reproducible",
                   env={**no_engine, "MLFLOW_STEPS_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reproducible: the second build gave the same digest" in result.stderr
    client = RegistryClient(registry.address)
    repository, tag = result.stdout.strip().split("/", 1)[1].rsplit(":", 1)
    _, manifest = client.manifest(repository, tag)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    base, *ours = manifest["layers"]
    assert base["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert {layer["mediaType"] for layer in ours} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"}
    config = json.loads(client.blob(repository, manifest["config"]["digest"], 1 << 20))
    for layer, diff_id in zip(ours, config["rootfs"]["diff_ids"][1:], strict=True):
        plain = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(client.blob(repository, layer["digest"], 1 << 30))).read()
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id


PYTHON_ENV_PROJECT = """name: iris-python-env
python_env: python_env.yaml
entry_points:
  main:
    parameters:
      C: {type: float, default: 1.0}
    command: "python train.py --C {C}"
"""
PYTHON_ENV = """python: "3.11"
build_dependencies:
  - pip
dependencies:
  - mlflow-skinny>=3,<4
  - scikit-learn>=1.3
  - pandas>=2
  - skops
"""


def test_a_python_env_codeset_built_directly_trains(docker_engine, registry, base_image,
                                                    no_engine, mlflow_server,
                                                    tmp_path: Path) -> None:
    from support.runtime_env import run_step

    project = write_codeset(tmp_path / "codeset", {
        "MLproject": PYTHON_ENV_PROJECT, "python_env.yaml": PYTHON_ENV,
        "train.py": (EXAMPLE / "train.py").read_text()})
    built = build(project, registry, base_image, "direct/python-env", env=no_engine)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "does not apply" not in built.stderr
    results = tmp_path / "results"
    run = run_step(docker_engine, built.stdout.strip(), project, results,
                   f"MLFLOW_TRACKING_URI={mlflow_server.url}",
                   "FUSEML_MLFLOW_ENTRYPOINT_ARGS=C=0.5", "FUSEML_MLFLOW_EXPERIMENT=direct")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "/models/m-" in (results / "model-url").read_text()


def test_the_uv_example_built_directly_trains(docker_engine, registry, base_image, no_engine,
                                              mlflow_server, tmp_path: Path) -> None:
    """examples/uv-project (pyproject.toml + uv.lock, no environment in MLproject): the
    image has exactly the lock's packages for it, MLflow and boto3 among them, and trains."""
    from support.runtime_env import run_step

    from mlflow_steps.build.inspect import read_image
    from mlflow_steps.env.spec import BuildOptions, resolve_env

    project = tmp_path / "codeset"
    shutil.copytree(REPO / "examples" / "uv-project", project)
    built = build(project, registry, base_image, "direct/uv-example", env=no_engine)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "does not apply" not in built.stderr
    reference = built.stdout.strip()
    record = read_image(reference, RegistryClient(registry.address))
    installed = dict(line.split("==", 1) for line in record.packages if "==" in line)
    _, spec = resolve_env(project, BuildOptions())
    assert installed == {package["name"]: package["version"] for package in spec.locked_pip}
    assert "mlflow-skinny" in installed and "boto3" in installed
    results = tmp_path / "results"
    run = run_step(docker_engine, reference, project, results,
                   f"MLFLOW_TRACKING_URI={mlflow_server.url}",
                   "FUSEML_MLFLOW_ENTRYPOINT_ARGS=C=0.5", "FUSEML_MLFLOW_EXPERIMENT=direct-uv")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "/models/m-" in (results / "model-url").read_text()
