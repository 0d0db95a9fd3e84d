"""Hostile inputs to `mlflow-steps server ...`, each through the real CLI (`serve`, which
execs the MLflow server, in a process of its own, forked from a warm interpreter).

Every entry must end in exit 2 with exactly one stderr line naming what to fix: no
traceback, no secret (store passwords, tokens, cloud keys), nothing created. Entries are
found by trying to break the commands; add new ones here.

``{name}`` in arguments and values is replaced by the module's fixtures: ``{root}`` (a
scratch directory), ``{store}`` (a store `serve` created) and ``{artifacts}`` (its artifact
directory), ``{file}`` (a regular file), ``{empty_db}`` (a database without MLflow schema),
``{purgeable}`` (a store with a run gc would purge now), ``{busy}`` (a port something
listens on), ``{closed}`` (a port nothing listens on).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy
from devstack import free_port
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from support.helpers import run_cli
from support.server_testing import clean_env, create_store

PASSWORD = "hostile-pw-8d7c6b5a"
SLASH_PASSWORD = "pa/ss-9x8y7z"  # a URL pattern alone would not mask it
TOKEN = "hostile-token-Zq8Xw2Lp9Vr4Kt7Mn3Bc"
AWS_SECRET = "hostile-aws-secret-5e4d3c2b1a"
SECRETS = (PASSWORD, SLASH_PASSWORD, TOKEN, AWS_SECRET)
UNREACHABLE_S3 = {"AWS_ACCESS_KEY_ID": "AKIAHOSTILE", "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                  "AWS_RETRY_MODE": "standard",
                  "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:{closed}",
                  "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/prefix"}


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    words: tuple[str, ...]
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset
    secrets: tuple[str, ...] = ()  # besides SECRETS


def case(*args: str, words: tuple[str, ...], secrets: tuple[str, ...] = (),
         **env: str | None) -> Case:
    return Case(args, words, env, secrets)


STORE = "MLFLOW_BACKEND_STORE_URI / --backend-store-uri: "
ARTIFACTS = "MLFLOW_ARTIFACTS_DESTINATION / --artifacts-destination: "
TTL = "MLFLOW_TRACKING_GC_TTL / --gc-ttl: "
TOKEN_LINE = "MLFLOW_TRACKING_TOKEN / --token: "
GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'

CASES: dict[str, Case] = {
    # gc TTL and interval
    "ttl beyond timedelta": case("gc", "--gc-ttl", "1000000000d",
                                 words=(TTL, "too long a duration (at most 999999999d)")),
    "ttl of 400 digits (float inf)": case("gc", words=(TTL, "too long", "(401 characters)"),
                                          MLFLOW_TRACKING_GC_TTL="9" * 400 + "d"),
    "negative ttl": case("gc", "--gc-ttl", "-1d", words=(TTL, "'-1d' is not a duration")),
    "nan ttl": case("gc", "--dry-run", words=(TTL, "'nan' is not"), MLFLOW_TRACKING_GC_TTL="nan"),
    "inf ttl": case("gc", "--gc-ttl", "infd", words=(TTL, "'infd' is not")),
    "ttl in arabic-indic digits": case("gc", "--gc-ttl", "\u0661d", words=(TTL, "is not a")),
    "ttl with a line break": case("gc", words=(TTL, "'1d\\n2h' is not"),
                                  MLFLOW_TRACKING_GC_TTL="1d\n2h"),
    "every beyond a year": case("gc", "--every", "99999999d",
                                words=("--every: must be at most 365d",)),
    "every of a millisecond": case("gc", "--every", "0.001s",
                                   words=("--every: must be at least 1s",)),
    "every with a line break": case("gc", "--every", "1\ns", words=("--every: '1\\ns' is not",)),
    # stores that are not there, or not databases
    "mistyped store directory": case("gc", "--dry-run", words=(
        STORE, "sqlite:///{root}/stroe/db.sqlite does not exist", "only `mlflow-steps server "
        "serve` creates a store"), MLFLOW_BACKEND_STORE_URI="sqlite:///{root}/stroe/db.sqlite"),
    "mistyped store file": case("db-upgrade", words=(STORE, "{root}/store/mlfow.db does not"),
                                MLFLOW_BACKEND_STORE_URI="sqlite:///{root}/store/mlfow.db"),
    "store is /dev/null": case("gc", words=(STORE, "sqlite:////dev/null is not a database file"),
                               MLFLOW_BACKEND_STORE_URI="sqlite:////dev/null"),
    "store is a directory": case("db-upgrade", "--dry-run", words=(STORE, "is not a database"),
                                 MLFLOW_BACKEND_STORE_URI="sqlite:///{root}"),
    "store path with a line break": case("gc", words=(STORE, "a%0Ab.db does not exist"),
                                         MLFLOW_BACKEND_STORE_URI="sqlite:///{root}/a\nb.db"),
    "database without MLflow schema": case("gc", words=(STORE, "has no MLflow schema"),
                                           MLFLOW_BACKEND_STORE_URI="{empty_db}"),
    "in-memory sqlite": case("gc", words=(STORE, "in-memory"), MLFLOW_BACKEND_STORE_URI="sqlite://"),
    "not a SQLAlchemy URL": case("gc", words=(STORE, "is not a SQLAlchemy database URL"),
                                 MLFLOW_BACKEND_STORE_URI=f"postgres ql://u:{PASSWORD}@h/d"),
    "unknown dialect driver": case("db-upgrade", words=(STORE, "cannot use", "Can't load plugin"),
                                   MLFLOW_BACKEND_STORE_URI=f"postgresql+nosuch://u:{PASSWORD}@h/d"),
    "driver not installed": case("gc", words=(STORE, "needs the Python module 'MySQLdb'"),
                                 MLFLOW_BACKEND_STORE_URI=f"mysql://u:{PASSWORD}@127.0.0.1:1/d"),
    "unreachable store, password with a slash": case(
        "gc", words=(STORE, "cannot connect to", ":***@127.0.0.1"),
        MLFLOW_BACKEND_STORE_URI=f"postgresql://u:{SLASH_PASSWORD}@127.0.0.1:{{closed}}/d"),
    # artifact destinations
    "gc with a mistyped artifact directory": case(
        "gc", words=(ARTIFACTS, "{root}/artefacts does not exist", "gc would delete runs"),
        MLFLOW_ARTIFACTS_DESTINATION="{root}/artefacts"),
    "artifacts under a file": case("serve", words=(ARTIFACTS, "{file} is not a directory"),
                                   MLFLOW_ARTIFACTS_DESTINATION="{file}/artifacts"),
    "s3 without a bucket": case("serve", words=(ARTIFACTS, "names no bucket"),
                                MLFLOW_ARTIFACTS_DESTINATION="s3://"),
    "unknown artifact scheme": case("gc", words=(ARTIFACTS, "unknown artifact store scheme 'foo'"),
                                    MLFLOW_ARTIFACTS_DESTINATION="foo:bar"),
    "runs:/ as destination": case("serve", words=(ARTIFACTS, "read-only references"),
                                  MLFLOW_ARTIFACTS_DESTINATION="runs:/abc/model"),
    "file:// without a path": case("serve", words=(ARTIFACTS, "names no directory"),
                                   MLFLOW_ARTIFACTS_DESTINATION="file://"),
    "artifact store unreachable during gc": case(
        "gc", "--gc-ttl", "0s", words=(ARTIFACTS, "cannot delete the artifacts of run",
                                       "EndpointConnectionError"),
        MLFLOW_BACKEND_STORE_URI="{purgeable}", **UNREACHABLE_S3),
    # where and how serve listens
    "host with a line break": case("serve", "--host", "a\nb",
                                   words=("MLFLOW_HOST / --host: 'a\\nb' is not an IP address",)),
    "host that does not resolve": case("serve", "--host", "no-such-host.invalid",
                                       words=("MLFLOW_HOST / --host: cannot resolve",)),
    "port in use": case("serve", "--port", "{busy}",
                        words=("MLFLOW_PORT / --port: cannot listen on 127.0.0.1:{busy}",)),
    "port out of range": case("serve", "--port", "70000", words=("--port", "70000")),
    "port with a line break": case("serve", words=("--port", "MLFLOW_PORT"),
                                   MLFLOW_PORT="5000\nx"),
    "no workers": case("serve", "--workers", "0", words=("--workers",)),
    # tokens and open APIs
    "no token on every interface": case("serve", "--host", "0.0.0.0", "--port", "{closed}",
                                        words=(TOKEN_LINE, "not set", "--no-auth", GENERATE),
                                        MLFLOW_TRACKING_TOKEN=None),
    "empty token on every interface": case("check", "--host", "0.0.0.0",
                                           words=(TOKEN_LINE, "not set"), MLFLOW_TRACKING_TOKEN=""),
    "the manifests' placeholder token": case("serve", words=(TOKEN_LINE, "is a placeholder"),
                                             MLFLOW_TRACKING_TOKEN="CHANGE-ME",
                                             secrets=("CHANGE-ME",)),
    "short token": case("check", words=(TOKEN_LINE, "too short", GENERATE),
                        MLFLOW_TRACKING_TOKEN="s3cr3t-t0k", secrets=("s3cr3t-t0k",)),
    "token of 6000 characters": case("serve", words=(TOKEN_LINE, "6000 characters, over 4096"),
                                     MLFLOW_TRACKING_TOKEN="Ab3" * 2000, secrets=("Ab3" * 2000,)),
    "token with a line break": case("serve", words=(TOKEN_LINE, "printable ASCII"),
                                    MLFLOW_TRACKING_TOKEN="abcdefghij\nklmnopqrstuvwxyz012",
                                    secrets=("abcdefghij", "klmnopqrstuvwxyz012")),
    "no-auth next to a token": case("serve", "--no-auth", words=(TOKEN_LINE, "contradicts")),
    "no-auth that is no boolean": case("check", words=("--no-auth", "MLFLOW_SERVER_NO_AUTH"),
                                       MLFLOW_SERVER_NO_AUTH="maybe"),
    "require-token that is no boolean": case("serve", words=("--require-token",),
                                             MLFLOW_SERVER_REQUIRE_TOKEN="please"),
    # Host header allow-list
    "allowed host given as a URL": case(
        "serve", words=("MLFLOW_SERVER_ALLOWED_HOSTS: entry 'https://mlflow.example.com' can "
                        "never match",), MLFLOW_SERVER_ALLOWED_HOSTS="https://mlflow.example.com"),
    "allowed hosts of commas only": case("check", words=("MLFLOW_SERVER_ALLOWED_HOSTS: lists no "
                                                         "host",),
                                         MLFLOW_SERVER_ALLOWED_HOSTS=",,"),
    "allowed host with a line break": case("serve", words=("entry 'a\\nb' can never match",),
                                           MLFLOW_SERVER_ALLOWED_HOSTS="a\nb"),
    # db-upgrade backups
    "backup directory under a file": case(
        "db-upgrade", "--backup-dir", "{file}/backups",
        words=("MLFLOW_SERVER_BACKUP_DIR / --backup-dir: {file} is not a directory",
               "--no-backup")),
    "backup directory is a file": case("db-upgrade", "--backup-dir", "{file}",
                                       words=("--backup-dir", "is a file")),
    # the command line itself
    "unknown command": case("nosuch", words=("No such command 'nosuch'",)),
    "no command": case(words=("server: needs a command: check, db-upgrade, gc, serve",)),
    "unknown option": case("gc", "--nosuch", words=("No such option", "--nosuch")),
}

def purgeable_store(root: Path) -> str:
    """A store `serve` created, holding one deleted run (gc with a TTL of 0s purges it)."""
    uri = f"sqlite:///{root / 'purgeable.sqlite'}"
    create_store(uri, str(root / "purgeable-artifacts"))
    store = SqlAlchemyStore(uri, "mlflow-artifacts:/")
    run = store.create_run(store.create_experiment("hostile"), "hostile", 0, [], "doomed")
    store.delete_run(run.info.run_id)
    store.engine.dispose()
    return uri


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    store, artifacts = f"sqlite:///{root / 'store' / 'mlflow.db'}", str(root / "artifacts")
    create_store(store, artifacts)
    (root / "a-file").write_text("not a directory\n")
    empty = root / "empty.sqlite"
    sqlalchemy.create_engine(f"sqlite:///{empty}").connect().close()
    purgeable = purgeable_store(root)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield {"root": str(root), "store": store, "artifacts": artifacts,
               "file": str(root / "a-file"), "empty_db": f"sqlite:///{empty}",
               "purgeable": purgeable, "busy": str(listener.getsockname()[1]),
               "closed": str(free_port())}


def fill(text: str, world: dict[str, str]) -> str:
    for name, value in world.items():
        text = text.replace("{" + name + "}", value)
    return text


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_clean_line(world: dict[str, str], warm_server_cli,
                                         name: str) -> None:
    hostile = CASES[name]
    env = clean_env(MLFLOW_BACKEND_STORE_URI=world["store"], MLFLOW_HOST="127.0.0.1",
                    MLFLOW_ARTIFACTS_DESTINATION=world["artifacts"], MLFLOW_TRACKING_TOKEN=TOKEN,
                    MLFLOW_SERVER_BACKUP_DIR=f"{world['root']}/backups")
    for key, value in hostile.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = fill(value, world)
    root = Path(world["root"])
    before = tree(root)
    args = ("server", *(fill(arg, world) for arg in hostile.args))
    result = (warm_server_cli.run(*args, env=env) if hostile.args[:1] == ("serve",)
              else run_cli(*args, env=env, timeout=300))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in output and "internal error" not in output
    assert lines[0].startswith("mlflow-steps: "), lines[0]
    for word in hostile.words:
        assert fill(word, world) in lines[0], lines[0]
    for secret in (*SECRETS, *hostile.secrets):
        assert secret not in output, f"{name}: a secret was printed"
    assert tree(root) == before, "something was created"
