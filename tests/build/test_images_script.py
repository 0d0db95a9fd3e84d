"""scripts/images.py (`make images`, `make push`): the step images on a base and to a
registry of the user's choosing, the options checked with the image-reference grammar.

No engine: the docker client is a recording stand-in (MLFLOW_STEPS_DOCKER_CLI), so what
the script asks the engine to build and push is checked as the engine would receive it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from devstack import DockerEngine, Registry

from images import IMAGES, parse_args, publish

RECORDER = """#!/bin/sh
# Stand-in for the docker client: one line per call, its arguments tab-separated.
(IFS='\t'; printf '%s\\n' "$*") >> "$RECORD"
"""
BASE = "registry.example:5000/me/python:3.12-slim"


@pytest.fixture
def docker_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The docker client's calls, recorded (a function returning them, split in words)."""
    client, record = tmp_path / "docker", tmp_path / "calls"
    client.write_text(RECORDER)
    client.chmod(0o755)
    monkeypatch.setenv("MLFLOW_STEPS_DOCKER_CLI", str(client))
    monkeypatch.setenv("RECORD", str(record))
    return lambda: [line.split("\t") for line in record.read_text().splitlines()]


def test_the_chosen_base_and_registry_reach_the_build_and_the_push(tmp_path: Path,
                                                                  docker_calls) -> None:
    local = Registry(tmp_path / "registry", port=5999)  # named, not started: nothing reaches it
    engine = DockerEngine(tmp_path / "engine", socket_path=tmp_path / "docker.sock")
    args = parse_args(["builder", "tracking-server", "--base", BASE, "--tag", "v1",
                       "--registry", "ghcr.io/me"])
    publish(engine, local, args)
    calls = docker_calls()
    builds = [call for call in calls if call[0] == "build"]
    assert len(builds) == 2 and all(f"--build-arg=BASE_IMAGE={BASE}" in call
                                    for call in builds)
    assert not any("library/python" in word for call in calls for word in call)  # no local base
    for name in ("builder", "tracking-server"):
        ours, theirs = f"{local.address}/{IMAGES[name][1]}:v1", f"ghcr.io/me/{IMAGES[name][1]}:v1"
        assert calls.index(["tag", ours, theirs]) < calls.index(["push", theirs])
        assert ["push", ours] in calls


def test_without_a_base_the_local_one_is_built_on(tmp_path: Path, docker_calls) -> None:
    local = Registry(tmp_path / "registry", port=5999)
    engine = DockerEngine(tmp_path / "engine", socket_path=tmp_path / "docker.sock")
    publish(engine, local, parse_args(["serve"]))
    [build] = [call for call in docker_calls() if call[0] == "build"]
    assert f"--build-arg=BASE_IMAGE={local.address}/library/python:3.11-slim" in build
    assert not any(call[0] == "tag" for call in docker_calls())  # no --registry: no push


@pytest.mark.parametrize(("registry", "remote"), [
    ("127.0.0.1:5055", "127.0.0.1:5055/mlflow-steps/serve:latest"),
    ("localhost/team", "localhost/team/mlflow-steps/serve:latest"),
    ("docker.io/me", "docker.io/me/mlflow-steps/serve:latest"),
])
def test_registry_options(registry: str, remote: str) -> None:
    for option in ("--registry", "--push"):  # --push: the former name, still taken
        assert parse_args(["serve", option, registry]).remotes == {"serve": remote}


def test_no_names_means_every_image() -> None:
    """`make images` / `make push REGISTRY=...` name no image (Python 3.11's argparse refused
    that with choices= on the names)."""
    args = parse_args(["--registry", "127.0.0.1:5055"])
    assert args.names == list(IMAGES) and list(args.remotes) == list(IMAGES)
    assert args.base is None and args.tag == "latest"


@pytest.mark.parametrize(("argv", "words"), [
    (["--base", "python:3.11 slim"], "--base: 'python:3.11 slim' is not an image reference"),
    (["--base", "Python:3.11"], "--base: 'Python:3.11' is not an image reference"),
    (["--registry", "me"], "--registry: 'me' does not start with a registry host"),
    (["--registry", "ghcr.io/Me"], "--registry: 'ghcr.io/Me/mlflow-steps/builder:latest' is "
                                   "not an image reference"),
    (["--push", "host:5000/"], "--registry: 'host:5000//mlflow-steps/builder:latest'"),
    (["--tag", "a\nb"], "--tag: 'mlflow-steps/builder:a\\nb' is not an image reference"),
    (["--nope"], "unrecognized arguments: --nope"),
    (["nosuch"], "argument NAME: 'nosuch' is not one of builder, serve, tracking-server"),
])
def test_bad_options_one_line_exit_2(argv: list[str], words: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and words in err, err
