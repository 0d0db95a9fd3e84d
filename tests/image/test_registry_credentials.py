"""Docker config.json and credential helpers: the docker CLI's order, one line per bad input."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.helpers import basic

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.retry import BUDGET_VARIABLE
from mlflow_steps.image.credentials import HUB_INDEX, Credentials, load_credentials

HOST = "reg.example:5000"


def write_helper(bin_dir: Path, name: str, body: str) -> Path:
    """An executable docker-credential-NAME that records its stdin in NAME.stdin."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(f'#!/bin/sh\n[ "$1" = get ] || exit 9\ncat > "{bin_dir}/{name}.stdin"\n'
                      f"{body}\n")
    helper.chmod(0o755)
    return helper


def answering(user: str, secret: str) -> str:
    return f"echo '{json.dumps({'ServerURL': HOST, 'Username': user, 'Secret': secret})}'"


NOT_FOUND = "echo 'credentials not found in native keychain'; exit 1"


def environment(tmp_path: Path, config: object, **helpers: str) -> dict[str, str]:
    """DOCKER_CONFIG with ``config`` (JSON, or raw text) and helpers on PATH."""
    directory = tmp_path / "docker"
    directory.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (directory / "config.json").write_text(text)
    for name, body in helpers.items():
        write_helper(tmp_path / "bin", name, body)
    return {"DOCKER_CONFIG": str(directory), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}


# -- 4. precedence: credHelpers[host] > credsStore > auths (docker CLI) ----------------------

AUTHS = {HOST: {"auth": basic("from-auths", "pa")}}
HELPERS = {"a": answering("from-a", "sa"), "b": answering("from-b", "sb"), "none": NOT_FOUND}
PRECEDENCE = {  # name: (config, expected username or None)
    "credHelpers beats credsStore and auths":
        ({"credHelpers": {HOST: "a"}, "credsStore": "b", "auths": AUTHS}, "from-a"),
    "credsStore beats auths": ({"credsStore": "b", "auths": AUTHS}, "from-b"),
    "another host's credHelper does not apply":
        ({"credHelpers": {"other.example": "a"}, "credsStore": "b", "auths": AUTHS}, "from-b"),
    "an empty credHelpers entry opts out to auths":
        ({"credHelpers": {HOST: ""}, "credsStore": "b", "auths": AUTHS}, "from-auths"),
    "credsStore not found means anonymous, not auths": ({"credsStore": "none", "auths": AUTHS},
                                                        None),
    "credHelper not found means anonymous": ({"credHelpers": {HOST: "none"}, "auths": AUTHS},
                                             None),
    "auths alone": ({"auths": AUTHS}, "from-auths"),
    "auths keyed by URL": ({"auths": {f"https://{HOST}/v1/": AUTHS[HOST]}}, "from-auths"),
    "auths keyed by http URL": ({"auths": {f"http://{HOST}": AUTHS[HOST]}}, "from-auths"),
    "auths of another port": ({"auths": {"reg.example:6000": AUTHS[HOST]}}, None),
    "empty auths entry": ({"auths": {HOST: {}}}, None),
    "nothing": ({}, None),
}


@pytest.mark.parametrize("name", PRECEDENCE)
def test_credential_precedence_follows_the_docker_cli(tmp_path: Path, name: str) -> None:
    config, expected = PRECEDENCE[name]
    found = load_credentials(HOST, environment(tmp_path, config, **HELPERS))
    assert (found.username if found else None) == expected


def test_helper_protocol_details(tmp_path: Path) -> None:
    env = environment(tmp_path, {"credsStore": "tok"}, tok=answering("<token>", "refresh-me"))
    assert load_credentials(HOST, env) == Credentials(identity_token="refresh-me")
    assert (tmp_path / "bin" / "tok.stdin").read_text() == HOST
    load_credentials("docker.io", env)  # Docker Hub: the docker CLI's index server key
    assert (tmp_path / "bin" / "tok.stdin").read_text() == HUB_INDEX


def test_docker_hub_auths_keys(tmp_path: Path) -> None:
    env = environment(tmp_path, {"auths": {HUB_INDEX: {"auth": basic("hubber", "x")}}})
    assert load_credentials("docker.io", env).username == "hubber"


def test_identity_token_keeps_the_user_of_auth(tmp_path: Path) -> None:
    env = environment(tmp_path, {"auths": {HOST: {"auth": basic("u", "p"),
                                                  "identitytoken": "idt"}}})
    assert load_credentials(HOST, env) == Credentials(username="u", identity_token="idt")


# -- 3. bad config.json: one line naming the file and the field ------------------------------

BAD_CONFIGS = {  # name: (config, field named, what the line says)
    "invalid JSON": ("{", None, "unreadable Docker config (not JSON)"),
    "a list": ("[]", None, "Docker config is a JSON list, not an object"),
    "a string": ('"auths"', None, "is a JSON string"),
    "null": ("null", None, "is a JSON null"),
    "auths a list": ({"auths": []}, "auths", "must map registries to credentials, not a list"),
    "auths a string": ({"auths": "x"}, "auths", "not a string"),
    "entry a string": ({"auths": {HOST: "dXNlcjpwYXNz"}}, f"auths.{HOST}",
                       "must be an object with auth or username/password, not a string"),
    "entry a list": ({"auths": {HOST: []}}, f"auths.{HOST}", "not a list"),
    "auth not base64": ({"auths": {HOST: {"auth": "not base64!!"}}}, f"auths.{HOST}.auth",
                        "is not base64 of user:password"),
    "auth without colon": ({"auths": {HOST: {"auth": base64.b64encode(b"nocolon").decode()}}},
                           f"auths.{HOST}.auth", "is not base64 of user:password"),
    "auth without user": ({"auths": {HOST: {"auth": basic("", "p")}}}, f"auths.{HOST}.auth",
                          "is not base64"),
    "auth not UTF-8": ({"auths": {HOST: {"auth": base64.b64encode(b"\xff:\xfe").decode()}}},
                       f"auths.{HOST}.auth", "is not base64"),
    "auth a number": ({"auths": {HOST: {"auth": 5}}}, f"auths.{HOST}.auth",
                      "must be a string, not a number"),
    "password an object": ({"auths": {HOST: {"username": "u", "password": {}}}},
                           f"auths.{HOST}.password", "must be a string, not a object"),
    "identitytoken a list": ({"auths": {HOST: {"identitytoken": []}}},
                             f"auths.{HOST}.identitytoken", "must be a string"),
    "credHelpers a list": ({"credHelpers": [HOST]}, "credHelpers",
                           "must map registry hosts to helper names, not a list"),
    "credHelpers entry a number": ({"credHelpers": {HOST: 5}}, f"credHelpers.{HOST}",
                                   "a number is not a credential helper name"),
    "credsStore a list": ({"credsStore": ["a"]}, "credsStore", "a list is not a credential"),
    "credsStore a path": ({"credsStore": "../../bin/sh"}, "credsStore",
                          "'../../bin/sh' is not a credential helper name"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_bad_docker_config_is_one_line(tmp_path: Path, name: str) -> None:
    config, field, expected = BAD_CONFIGS[name]
    env = environment(tmp_path, config)
    with pytest.raises(StepError) as caught:
        load_credentials(HOST, env)
    text = str(caught.value)
    prefix = f"{env['DOCKER_CONFIG']}/config.json: " + (f"{field}: " if field else "")
    assert text.startswith(prefix) and expected in text, text
    assert "\n" not in text and "Expecting value" not in text
    for value in ("dXNlcjpwYXNz", "not base64!!", basic("", "p"), "bm9jb2xvbg=="):
        assert value not in text  # values that may be credentials are never echoed


BAD_HELPERS = {  # name: (helper body, what the line says)
    "non-JSON": ("echo 'hello there'", "get printed something that is not JSON"),
    "empty output": ("true", "get printed something that is not JSON"),
    "a JSON list": ("echo '[]'", "get printed a JSON list, not an object with Username and"),
    "a JSON string": ("echo '\"x\"'", "get printed a JSON string"),
    "wrong types": ("echo '{\"Username\": 5, \"Secret\": \"x\"}'",
                    "get printed a Username or Secret that is not a string"),
    "exit non-zero": ("echo 'keychain locked' >&2; exit 3",
                      "get failed (exit status 3: keychain locked)"),
    "exit non-zero silently": ("exit 4", "get failed (exit status 4)"),
    "killed": ("kill -9 $$", "get failed (exit status -9)"),
}


@pytest.mark.parametrize("name", BAD_HELPERS)
@pytest.mark.parametrize("field", ["credsStore", f"credHelpers.{HOST}"])
def test_bad_credential_helper_is_one_line(tmp_path: Path, name: str, field: str) -> None:
    body, expected = BAD_HELPERS[name]
    config = {"credsStore": "bad"} if field == "credsStore" else {"credHelpers": {HOST: "bad"}}
    env = environment(tmp_path, config, bad=body)
    with pytest.raises(StepError) as caught:
        load_credentials(HOST, env)
    text = str(caught.value)
    assert text.startswith(f"{env['DOCKER_CONFIG']}/config.json: {field}: "
                           f"docker-credential-bad {expected}"), text


def test_missing_credential_helper(tmp_path: Path) -> None:
    env = environment(tmp_path, {"credsStore": "nowhere-to-be-found"})
    with pytest.raises(StepError, match=r"config\.json: credsStore: credential helper "
                                        r"docker-credential-nowhere-to-be-found is not on PATH"):
        load_credentials(HOST, env)


def test_hanging_credential_helper_is_bounded(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleeper.pid"
    env = {**environment(tmp_path, {"credsStore": "slow"},
                         slow=f'sleep 60 & echo $! > "{pid_file}"; wait'),
           BUDGET_VARIABLE: "2"}
    started = time.monotonic()
    with pytest.raises(StepError) as caught:
        load_credentials(HOST, env)
    assert time.monotonic() - started < 15
    assert str(caught.value).endswith(f"credsStore: docker-credential-slow get did not finish "
                                      f"within 2 s ({BUDGET_VARIABLE} sets the budget)")
    assert ended(pid_file), "the helper's child lives"


def ended(pid_file: Path, within: float = 5) -> bool:
    """Whether the process whose pid ``pid_file`` holds is gone (or a zombie) within
    ``within`` seconds."""
    stat = Path(f"/proc/{pid_file.read_text().strip()}/stat")
    deadline = time.monotonic() + within
    while True:
        try:
            state = stat.read_text().rsplit(") ", 1)[1][:1]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X") or time.monotonic() > deadline:
            return state in ("Z", "X")
        time.sleep(0.1)


def test_interrupted_credential_helper_is_ended(tmp_path: Path) -> None:
    """SIGTERM while the skip check waits on a credential helper: the build exits with
    128 + SIGTERM at once, and the helper's process group is gone with it."""
    from support.faulty_proxy import ScriptedServer
    from support.helpers import EXAMPLE

    def challenge(srv: ScriptedServer, handler) -> None:
        srv.answer(handler, 401, headers={"WWW-Authenticate": 'Basic realm="x"'})

    registry = ScriptedServer(challenge)
    pid_file = tmp_path / "sleeper.pid"
    env = {**os.environ, **environment(tmp_path, {"credsStore": "slow"},
                                       slow=f'sleep 60 & echo $! > "{pid_file}"; wait'),
           "FUSEML_REGISTRY": registry.address, "FUSEML_REPOSITORY": "helper/interrupted",
           "FUSEML_BUILDER": "docker", "DOCKER_HOST": "unix:///nonexistent.sock"}
    build = subprocess.Popen([sys.executable, "-m", "mlflow_steps", "build", str(EXAMPLE)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert build.poll() is None and time.monotonic() < deadline, build.stderr
            time.sleep(0.05)
        signalled = time.monotonic()
        build.send_signal(signal.SIGTERM)
        _, stderr = build.communicate(timeout=30)
    finally:
        build.kill()
        registry.stop()
    assert build.returncode == 128 + signal.SIGTERM, stderr
    assert time.monotonic() - signalled < 5
    assert ended(pid_file), "the helper's child lives"


def test_helper_and_registry_share_one_budget(tmp_path: Path) -> None:
    """A helper that hangs during a manifest check gets what is left of the check's budget."""
    from support.faulty_proxy import ScriptedServer

    from mlflow_steps.image.client import RegistryClient

    def slow_challenge(srv: ScriptedServer, handler) -> None:
        time.sleep(0.5)  # the challenge itself spends part of the budget
        srv.answer(handler, 401, headers={"WWW-Authenticate": 'Basic realm="x"'})

    registry = ScriptedServer(slow_challenge)
    env = environment(tmp_path, {"credsStore": "slow"}, slow="sleep 60")
    started = time.monotonic()
    try:
        with pytest.raises(StepError, match=r"^/.*/config\.json: credsStore: "
                           r"docker-credential-slow get did not finish within 2\.\d+ s"):
            RegistryClient(registry.address, environ=env, budget=3).manifest_digest("a", "b")
    finally:
        registry.stop()
    assert time.monotonic() - started < 15
