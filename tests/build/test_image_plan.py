"""The image plan: what it holds for each kind of codeset, and that its two renderings (the
Dockerfile context and the direct builder's layers and config) say the same user, env,
labels and record files."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from support.helpers import REPO

from mlflow_steps.build.direct.assemble import image_config, user_layer
from mlflow_steps.build.direct.base_image import BaseFacts
from mlflow_steps.build.dockerfile import render_dockerfile, write_context
from mlflow_steps.build.image_plan import (
    DEFAULT_PATH,
    ENV_DIR,
    OWN_LAYERS,
    TOOLING_WHEEL,
    image_plan,
)
from mlflow_steps.env.hashing import env_tag, spec_digest
from mlflow_steps.env.spec import BuildOptions, resolve_env

LOCK = (REPO / "tests/data/conda-lock.yml").read_text()
PASSWD = "root:x:0:0:root:/root:/bin/bash\n"


def plan_of(codeset, files: dict[str, str | bytes], name: str = "codeset"):
    spec = resolve_env(codeset(files, name), BuildOptions())[1]
    return spec, image_plan(spec)


def test_pip_codeset(codeset) -> None:
    spec, plan = plan_of(codeset, {
        "requirements.txt": "--extra-index-url https://example.org/simple\n-c pins.txt\n"
                            "numpy\n./w/x-1.0-py3-none-any.whl\n",
        "pins.txt": "numpy==1.26.4\n", "w/x-1.0-py3-none-any.whl": b"PK"})
    install = plan.install
    assert (install.strategy, install.python, install.source) == ("pip", "3.11",
                                                                  "requirements.txt")
    assert install.own_layers == OWN_LAYERS and install.build_requirements == ()
    files = install.files(ENV_DIR)
    assert set(files) == {"requirements.txt", "constraints.txt"}
    assert files["requirements.txt"].splitlines() == [
        "--extra-index-url https://example.org/simple",
        "-c /opt/mlflow-steps-build/env/constraints.txt", "numpy",
        "/opt/mlflow-steps-build/env/wheels/x-1.0-py3-none-any.whl", "mlflow-skinny<4", "boto3"]
    assert files["constraints.txt"] == "numpy==1.26.4\n"
    # Read from elsewhere (the direct builder's inputs): the same files, naming that place.
    assert install.files("/w/env")["requirements.txt"] == files["requirements.txt"].replace(
        ENV_DIR, "/w/env")
    assert dict(install.wheel_files) == {"x-1.0-py3-none-any.whl": spec.local_files[
        "x-1.0-py3-none-any.whl"]}
    assert (plan.base_image, plan.tag, plan.spec_digest) == (
        "python:3.11-slim", env_tag(spec), spec_digest(spec))
    assert plan.tooling_wheel == TOOLING_WHEEL and plan.tooling_prefix == "/opt/mlflow-steps"
    assert (plan.user.uid, plan.user.name, plan.user.workdir) == (1000, "mlflow", "/srv/mlflow")
    assert dict(plan.runtime_env) == {"PATH": f"/opt/env/bin:${{PATH:-{DEFAULT_PATH}}}",
                                      "MLFLOW_STEPS_ENV": "/opt/env",
                                      "MLFLOW_STEPS_ENV_TAG": plan.tag}
    assert plan.labels["io.mlflow-steps.strategy"] == "pip"
    assert plan.labels["io.mlflow-steps.lock"] == plan.record.lock == (
        "/opt/mlflow-steps-build/lock.txt")
    assert plan.labels["io.mlflow-steps.sbom"] == plan.record.sbom
    assert plan.command == ("/opt/mlflow-steps/bin/mlflow-steps", "run", "/project")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.tag = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.labels["io.mlflow-steps.strategy"] = "conda"  # type: ignore[index]


def test_python_env_codeset(codeset) -> None:
    _, plan = plan_of(codeset, {
        "python_env.yaml": "python: 3.12.1\nbuild_dependencies: [pip, setuptools==70.0]\n"
                           "dependencies: [-r requirements.txt, Pandas]\n",
        "requirements.txt": "numpy\n"})
    install = plan.install
    assert (install.strategy, install.python, plan.base_image) == ("pip", "3.12",
                                                                   "python:3.12-slim")
    files = install.files(ENV_DIR)
    assert files["build-requirements.txt"] == "pip\nsetuptools==70.0\n"
    assert files["requirements.txt"].splitlines()[:2] == ["numpy", "pandas"]


def test_conda_codeset(codeset) -> None:
    _, plan = plan_of(codeset, {"conda.yaml": "channels: [conda-forge]\n"
                                              "dependencies: [python=3.11, numpy, "
                                              "{pip: [six]}]\n"})
    install = plan.install
    assert install.strategy == "conda" and install.conda_channels == ("conda-forge",)
    assert sorted(install.conda_dependencies) == ["numpy", "python 3.11.*"]
    files = install.files(ENV_DIR)
    assert set(files) == {"requirements.txt", "environment.yml"}
    assert files["environment.yml"] == ("channels:\n- conda-forge\ndependencies:\n- numpy\n"
                                        "- python 3.11.*\n- pip\n")
    assert files["requirements.txt"].splitlines()[0] == "six"


def test_conda_lock_codeset(codeset) -> None:
    _, plan = plan_of(codeset, {"conda-lock.yml": LOCK})
    install = plan.install
    assert install.strategy == "conda-lock" and plan.labels["io.mlflow-steps.strategy"] == (
        "conda-lock")
    assert [p["name"] for p in install.locked_conda] == ["numpy", "python"]
    files = install.files(ENV_DIR)
    assert files["conda-explicit.txt"].splitlines()[0] == "@EXPLICIT"
    assert files["requirements.lock.txt"].startswith("six @ ")


BASE_ENV = ["PATH=/usr/local/bin:/usr/bin"]


def synthetic_base(passwd: str = PASSWD, env: list[str] | None = BASE_ENV) -> BaseFacts:
    """Base facts (``env`` None: a config with no Env at all)."""
    settings = {"Labels": {"from": "base"}, **({"Env": env} if env is not None else {})}
    config = {"architecture": "amd64", "config": settings,
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}, "history": []}
    return BaseFacts("library/python", "sha256:" + "1" * 64, (), config,
                     {"3.11": "/usr/bin/python3.11"}, {"3.11": "3.11.9"}, "glibc", "2.36",
                     frozenset(),
                     {"etc/passwd": {"text": passwd, "mode": 0o644, "uid": 0, "gid": 0}}, {})


def dockerfile_settings(dockerfile: str, base_env: list[str]) -> dict[str, object]:
    """The final image's user, workdir, command, env and labels as the Dockerfile sets them
    (ENV applied as Docker applies it, onto the base's Env: ``$PATH``, ``${PATH:-default}``)."""
    runtime = dockerfile[dockerfile.rindex("\nFROM "):]
    folded = runtime.replace("\\\n", " ")
    env = dict(entry.split("=", 1) for entry in base_env)
    labels: dict[str, str] = {}
    for line in folded.splitlines():
        words = line.split()
        if words[:1] == ["ENV"]:
            for pair in words[1:]:
                key, value = pair.split("=", 1)
                default = re.search(r"\$\{PATH:-([^}]*)\}", value)
                path = env.get("PATH") or (default[1] if default else "")
                env[key] = re.sub(r"\$\{PATH:-[^}]*\}|\$PATH", path, value)
        elif words[:1] == ["LABEL"]:
            labels.update(re.findall(r'(\S+)="([^"]*)"', line))
    return {"User": re.search(r"^USER (\S+)$", runtime.rsplit("\nRUN ", 1)[1], re.M)[1],
            "WorkingDir": re.search(r"^WORKDIR (\S+)$", runtime, re.M)[1],
            "Cmd": json.loads(re.search(r"^CMD (.+)$", runtime, re.M)[1]),
            "Env": env, "Labels": labels}


@pytest.mark.parametrize(("files", "base_env", "path"), [
    ({"requirements.txt": "six\n"}, BASE_ENV, "/opt/env/bin:/usr/local/bin:/usr/bin"),
    ({"conda-lock.yml": LOCK}, BASE_ENV, "/opt/env/bin:/usr/local/bin:/usr/bin"),
    # a base whose config has no Env at all: the standard PATH after the environment's
    ({"requirements.txt": "six\n"}, None, f"/opt/env/bin:{DEFAULT_PATH}")])
def test_both_renderings_agree_on_user_env_labels_and_command(codeset, files, base_env,
                                                              path) -> None:
    _, plan = plan_of(codeset, files)
    ours = dockerfile_settings(render_dockerfile(plan), base_env or [])
    config = image_config(synthetic_base(env=base_env), plan,
                          [("tooling", "sha256:" + "2" * 64)],
                          {"org.opencontainers.image.base.digest": "sha256:" + "1" * 64})
    settings = config["config"]
    assert settings["User"] == ours["User"] == str(plan.user.uid)
    assert settings["WorkingDir"] == ours["WorkingDir"] == plan.user.workdir
    assert settings["Cmd"] == ours["Cmd"] == list(plan.command)
    assert dict(e.split("=", 1) for e in settings["Env"]) == ours["Env"]
    assert ours["Env"]["PATH"] == path
    assert ours["Labels"] == dict(plan.labels)
    assert settings["Labels"] == {"from": "base", **plan.labels,
                                  "org.opencontainers.image.base.digest": "sha256:" + "1" * 64}


def test_both_renderings_add_the_same_runtime_user(codeset) -> None:
    _, plan = plan_of(codeset, {"requirements.txt": "six\n"})
    user = plan.user
    dockerfile = render_dockerfile(plan)
    assert (f"useradd --uid {user.uid} --create-home --shell /bin/sh {user.name}"
            in dockerfile)
    assert f"mkdir -p {user.workdir} && chown {user.uid} {user.workdir}" in dockerfile
    entries = {e.name: e for e in user_layer(synthetic_base(), user).entries}
    assert entries["etc/passwd"].data == (
        PASSWD + f"{user.name}:x:{user.uid}:{user.uid}::/home/{user.name}:/bin/sh\n").encode()
    workdir = entries[user.workdir.lstrip("/")]
    assert (workdir.kind, workdir.uid, workdir.gid) == ("dir", user.uid, user.uid)


def test_both_renderings_record_the_same_files(codeset, tmp_path: Path) -> None:
    """The Dockerfile copies the plan's env files to record.env_dir and writes the lock and
    SBOM where the labels say; the context's env/ is the plan's files, byte for byte (the
    direct builder writes the same files there: test_direct_builder reads them back)."""
    _, plan = plan_of(codeset, {"requirements.txt": "numpy\n./w/x-1.0-py3-none-any.whl\n",
                                "w/x-1.0-py3-none-any.whl": b"PK"})
    record = plan.record
    context = write_context(plan, tmp_path / "ctx")
    dockerfile = (context / "Dockerfile").read_text()
    assert f"COPY env/ {record.env_dir}/" in dockerfile
    assert f"-o {record.lock} " in dockerfile and f"-o {record.sbom} " in dockerfile
    written = {p.relative_to(context / "env").as_posix(): p.read_bytes()
               for p in (context / "env").rglob("*") if p.is_file()}
    assert written == {**{name: text.encode() for name, text in
                          plan.install.files(record.env_dir).items()},
                       "wheels/x-1.0-py3-none-any.whl": b"PK"}
