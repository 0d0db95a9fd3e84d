"""`build --platform`: the direct builder makes a linux/arm64 image (and an index of several
platforms) on this amd64 machine without running anything of the image; engines refuse a
foreign platform with one line. (The arm64 image running under qemu-user: test_arm64_image.)"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import requests
from support.helpers import make_wheel, run_cli
from support.image_checks import layer_files
from support.index_server import local_index
from support.locks import uv_project
from support.synthetic_base import build, push_synthetic_base, push_synthetic_index

from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.push import OCI_INDEX_MEDIA_TYPE

BOTH = "linux/amd64,linux/arm64"


def _index_with_native_wheels(root: Path, aarch64: bool = True) -> Path:
    """A PEP 503 index of mls-native 1.0: a wheel for x86_64 and (``aarch64``) one for
    aarch64, each saying which it is (and a module the same in both); and mls-amd 1.0, for
    x86_64 only."""
    machines = ("x86_64", "aarch64") if aarch64 else ("x86_64",)
    for name, cpus in (("mls_native", machines), ("mls_amd", ("x86_64",))):
        project = root / "simple" / name.replace("_", "-")
        project.mkdir(parents=True)
        wheels = [make_wheel(project, name, "1.0", {
            f"{name}.py": f"MACHINE = {cpu!r}\n".encode(),
            f"{name}_common.py": b"COMMON = 'the same for every CPU'\n"},
            tag=f"cp311-cp311-manylinux_2_17_{cpu}") for cpu in cpus]
        (project / "index.html").write_text("".join(
            f'<a href="{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
            f"{w.name}</a>\n" for w in wheels))
    return root


def _site_module(files: dict[str, bytes], module: str) -> bytes | None:
    """``module``.py of site-packages among an image's ``files`` (None: not there)."""
    return next((data for name, data in files.items()
                 if name.endswith(f"site-packages/{module}.py")), None)


def test_two_platforms_give_one_index_of_native_images(registry, no_engine, codeset,
                                                        warm_cache, tmp_path: Path) -> None:
    client = RegistryClient(registry.address)
    base = push_synthetic_index(client, tmp_path / "base")
    project = codeset({"requirements.txt": "mls-native==1.0\nsix==1.16.0\n"})
    with local_index(_index_with_native_wheels(tmp_path / "index")) as url:
        env = {**no_engine, "PIP_EXTRA_INDEX_URL": url,
               "MLFLOW_STEPS_CACHE": warm_cache(tmp_path / "cache")}
        made = build(project, registry, base, "multi/env", "--platform", BOTH, env=env)
        assert made.returncode == 0, made.stderr[-3000:]
        # the platforms stage in turn, in the order given (the first one's layers are made
        # while the second stages)
        staged = re.findall(r"^\[direct\] environment staged for (\S+)", made.stderr, re.M)
        assert staged == ["linux/amd64", "linux/arm64"], made.stderr[-3000:]
        reference = made.stdout.strip()
        tag = reference.rsplit(":", 1)[1]
        digest, index = client.served("multi/env", tag)
        assert index["mediaType"] == OCI_INDEX_MEDIA_TYPE
        assert [(m["platform"]["os"], m["platform"]["architecture"])
                for m in index["manifests"]] == [("linux", "amd64"), ("linux", "arm64")]
        for platform, machine in (("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")):
            _, manifest = client.manifest("multi/env", tag, platform)
            config = json.loads(client.blob("multi/env", manifest["config"]["digest"], 1 << 20))
            assert config["architecture"] == platform.split("/")[1]
            files = layer_files(client, "multi/env", manifest)
            assert _site_module(files, "mls_native") == f"MACHINE = {machine!r}\n".encode()
            assert any(name.endswith("__pycache__/mls_native_common.cpython-311.pyc")
                       for name in files)
            wheel = next(data for name, data in files.items()
                         if name.endswith("mls_native-1.0.dist-info/WHEEL"))
            assert f"manylinux_2_17_{machine}".encode() in wheel
            # the interpreter the venv names is the base's own, for this platform
            lock = files["opt/mlflow-steps-build/lock.txt"].decode()
            assert "mls-native==1.0" in lock and "six==1.16.0" in lock
        # the platform set is in the tag: an amd64-only image is another tag
        def hashed(*platform: str) -> str:
            return run_cli("hash", str(project), "--base-image", base, *platform,
                           env=env).stdout.strip()

        assert hashed("--platform", BOTH) == tag
        assert hashed() != tag  # the platform set is in the tag: amd64 alone is another
        assert hashed("--platform", " linux/arm64/v8 ,linux/amd64") not in (tag, hashed())

        # inspect: the platforms, then each one's image and lock
        shown = run_cli("inspect", reference, "--insecure-registries", registry.address,
                        "--codeset", str(project), env=env)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert f"digest     {digest}" in shown.stdout
        assert "platforms  linux/amd64, linux/arm64" in shown.stdout
        assert shown.stdout.count("  mls-native==1.0") == 2
        assert [line for line in shown.stdout.splitlines() if line.startswith("platform ")] == [
            "platform   linux/amd64", "platform   linux/arm64"]
        assert f"hashes to {tag}: this image is its environment" in shown.stdout
        pylock = tmp_path / "arm64.pylock.toml"
        one = run_cli("inspect", reference, "--insecure-registries", registry.address,
                      "--write-pylock", str(pylock), env=env)
        assert one.returncode == 2 and "name one with --platform" in one.stderr
        assert not pylock.exists()
        one = run_cli("inspect", reference, "--insecure-registries", registry.address,
                      "--platform", "linux/arm64", "--write-pylock", str(pylock), env=env)
        assert one.returncode == 0, one.stderr[-2000:]
        assert "platform   linux/arm64" in one.stdout and "linux/amd64\n" not in one.stdout
        assert 'name = "mls-native"' in pylock.read_text()

        skipped = build(project, registry, base, "multi/env", "--platform", BOTH, env=env)
        assert skipped.returncode == 0 and "build skipped" in skipped.stderr
        # built again, then once more with every layer made again (no cache but uv's, which
        # holds downloads): the same index, its images compared per platform
        again = build(project, registry, base, "multi/again", "--platform", BOTH,
                      "--check-reproducible", env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"reproducible: the second build gave the same digest ({digest})" in again.stderr
        assert client.served("multi/again", tag)[0] == digest  # same input, same digests

        # arm64 alone, every layer made anew (a layer cache of its own): the same layers,
        # so the bytecode the index's arm64 image took from its amd64 twin is exact
        arm = build(project, registry, base, "multi/arm", "--platform", "linux/arm64",
                    env={**env, "MLFLOW_STEPS_CACHE": str(tmp_path / "arm-cache")})
        assert arm.returncode == 0, arm.stderr[-3000:]
        arm_tag = arm.stdout.strip().rsplit(":", 1)[1]
        _, arm_manifest = client.served("multi/arm", arm_tag)
        assert "layers" in arm_manifest  # one platform: an image, not an index
        _, arm_in_index = client.manifest("multi/env", tag, "linux/arm64")
        assert [layer["digest"] for layer in arm_manifest["layers"]] == [
            layer["digest"] for layer in arm_in_index["layers"]]  # the same arm64 layers


def test_a_distribution_without_a_wheel_for_a_platform_is_refused_before_any_push(
        registry, no_engine, codeset, tmp_path: Path) -> None:
    client = RegistryClient(registry.address)
    base = push_synthetic_index(client, tmp_path / "base", repository="multi/base-nowheel")
    project = codeset({"requirements.txt": "mls-native==1.0\n"})
    with local_index(_index_with_native_wheels(tmp_path / "index", aarch64=False)) as url:
        for builder in ("direct", "auto"):
            result = build(project, registry, base, "multi/nowheel", "--platform", BOTH,
                           env={**no_engine, "PIP_EXTRA_INDEX_URL": url}, builder=builder)
            assert result.returncode == 2, result.stderr[-2000:]
            line = result.stderr.strip().splitlines()[-1]
            assert "linux/arm64" in line and "mls-native" in line, line
            # amd64 was staged and checked first: its layers were being made, not pushed
            assert "[direct] environment staged for linux/amd64" in result.stderr
            assert "Traceback" not in result.stderr and result.stdout == ""
    # nothing pushed: the registry has no such repository (one blob would make it)
    catalog = requests.get(f"http://{registry.address}/v2/_catalog", timeout=10).json()
    assert "multi/nowheel" not in catalog["repositories"]




def test_a_base_without_the_first_platform_is_one_line_before_any_push(
        registry, no_engine, codeset, tmp_path: Path) -> None:
    """The first platform's base is missing (an amd64-only base, arm64 asked first): one line
    naming it, exit 2, the other platform not left waiting, nothing pushed."""
    client = RegistryClient(registry.address)
    base = push_synthetic_base(client, tmp_path / "base", repository="multi/base-amd64")
    project = codeset({"requirements.txt": "six==1.16.0\n"})
    result = run_cli("build", str(project), "--builder", "direct", "--registry",
                     registry.address, "--base-image", base, "--repository", "multi/nobase",
                     "--platform", "linux/arm64,linux/amd64", env=no_engine, process=True,
                     timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert f"{base} is a linux/amd64 image, not linux/arm64" in line, line
    assert "Traceback" not in result.stderr and result.stdout == ""
    catalog = requests.get(f"http://{registry.address}/v2/_catalog", timeout=10).json()
    assert "multi/nobase" not in catalog["repositories"]


def test_a_uv_lock_is_selected_for_each_platform(registry, no_engine, codeset, warm_cache,
                                                  tmp_path: Path) -> None:
    """One uv.lock (real uv, universal) for two CPUs: each image installs what the lock
    selects for its CPU (a package marked for x86_64 only is in the amd64 image alone; a
    native one has its own wheel in each), hash-checked against the lock."""
    client = RegistryClient(registry.address)
    base = push_synthetic_index(client, tmp_path / "base", repository="multi/base-lock")
    with local_index(_index_with_native_wheels(tmp_path / "index")) as url:
        project = uv_project(tmp_path / "uv", url, '"mls-native==1.0", '
                             '"mls-amd==1.0; platform_machine == \'x86_64\'"')
        env = {**no_engine, "PIP_EXTRA_INDEX_URL": url,
               "MLFLOW_STEPS_CACHE": warm_cache(tmp_path / "cache")}
        explained = run_cli("hash", str(project), "--base-image", base, "--platform", BOTH,
                            "--explain", env=env)
        assert explained.returncode == 0, explained.stderr
        by_platform = json.loads(explained.stdout.split("\n", 1)[1].rsplit("\n", 2)[0]
                                 )["locked"]["pip_by_platform"]
        assert {p: [x["name"] for x in packages] for p, packages in by_platform.items()} == {
            "linux/amd64": ["mls-amd", "mls-native"], "linux/arm64": ["mls-native"]}
        made = build(project, registry, base, "multi/locked", "--platform", BOTH, env=env)
        assert made.returncode == 0, made.stderr[-3000:]
        reference = made.stdout.strip()
        tag = reference.rsplit(":", 1)[1]
        assert tag == explained.stdout.strip().splitlines()[-1]
        for platform, cpu, amd_only in (("linux/amd64", "x86_64", True),
                                        ("linux/arm64", "aarch64", False)):
            files = layer_files(client, "multi/locked",
                           client.manifest("multi/locked", tag, platform)[1])
            assert _site_module(files, "mls_native") == f"MACHINE = {cpu!r}\n".encode()
            assert (_site_module(files, "mls_amd") is not None) is amd_only
        shown = run_cli("inspect", reference, "--insecure-registries", registry.address,
                        env=env)
        assert shown.returncode == 0, shown.stderr[-2000:]
        amd64, arm64 = shown.stdout.split("platform   linux/amd64", 1)[1].split(
            "platform   linux/arm64")
        assert "mls-amd==1.0" in amd64 and "mls-amd" not in arm64
        assert "mls-native==1.0" in amd64 and "mls-native==1.0" in arm64


def test_engines_and_resolved_pins_refuse_a_foreign_platform_with_one_line(
        registry, no_engine, codeset, tmp_path: Path) -> None:
    project = codeset({"requirements.txt": "six==1.16.0\n"})
    for builder in ("docker", "buildah"):
        result = build(project, registry, f"{registry.address}/x/base:1", "multi/engine",
                       "--platform", "linux/arm64", env=no_engine, builder=builder)
        assert result.returncode == 2
        line = result.stderr.strip().splitlines()[-1]
        assert "platform" in line and "linux/arm64" in line and builder in line, line
    plan = run_cli("build", str(project), "--stage", "prepare", "--plan-dir",
                   str(tmp_path / "plan"), "--registry", registry.address,
                   "--platform", "linux/arm64", env=no_engine)
    assert plan.returncode == 2 and "kaniko builds linux/amd64 images only" in plan.stderr
    assert not (tmp_path / "plan").exists()
    unknown = run_cli("hash", str(project), "--platform", "linux/s390x", env=no_engine)
    assert unknown.returncode == 2 and "platform" in unknown.stderr
    assert "s390x" in unknown.stderr.strip().splitlines()[-1]
    resolved = run_cli("hash", str(project), "--resolve", "--platform", BOTH, env=no_engine)
    assert resolved.returncode == 2, resolved.stderr
    assert resolved.stderr.strip().splitlines()[-1].endswith(
        "cannot be built for them (--resolve pins for linux/amd64); build it for linux/amd64, "
        "or lock it for each platform")
    wheel = "https://example.invalid/mls_amd-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"
    locked = codeset({"pylock.toml": f'lock-version = "1.0"\ncreated-by = "test"\n'
                      f'requires-python = ">=3.10"\n[[packages]]\nname = "mls-amd"\n'
                      f'version = "1.0"\n[[packages.wheels]]\nurl = "{wheel}"\n'
                      f'hashes = {{sha256 = "{"0" * 64}"}}\n'}, name="locked")
    refused = run_cli("hash", str(locked), "--platform", BOTH, env=no_engine)
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("mlflow-steps: error: pylock.toml: No wheel found") and (
        "'mls-amd'" in line and "on linux/arm64; relock for it" in line), line
