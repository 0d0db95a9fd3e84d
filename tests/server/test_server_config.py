"""Server configuration: TTL parsing, redaction, normalisation, and bad config at the CLI."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from devstack import free_port
from support.helpers import run_cli
from support.server_testing import create_store

from mlflow_steps.core.errors import StepError
from mlflow_steps.server.config import ServerConfig, format_duration, parse_duration

PASSWORD = "pa55-w0rd-xyz"


@pytest.mark.parametrize(("text", "expected"), [
    ("30d0h0m0s", timedelta(days=30)),
    ("0d0h10m0s", timedelta(minutes=10)),
    ("12h", timedelta(hours=12)),
    ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ("1.5d", timedelta(hours=36)),
    ("0s", timedelta(0)),
])
def test_durations_follow_mlflow_format(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "3x", "1h2d", "-1d", "1 d", "d", "1d 2h"])
def test_malformed_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="#d#h#m#s"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "message"), [
    ("1000000000d", "too long a duration (at most 999999999d)"),
    ("99999999999999999999999d", "too long a duration"),
    ("1" * 400 + "d", "too long a duration"),           # float('1...1') is inf
    ("1" * 400 + "s", "too long a duration"),
    ("\u0661d", "is not a duration"),                   # ARABIC-INDIC DIGIT ONE
    ("\U0001d7cfh", "is not a duration"),               # MATHEMATICAL BOLD DIGIT ONE
    ("nan d", "is not a duration"), ("nand", "is not a duration"), ("infd", "is not a duration"),
    ("1e3s", "is not a duration"), ("-0d", "is not a duration"), ("+1d", "is not a duration"),
])
def test_out_of_range_durations_are_value_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_duration(text)
    assert len(str(caught.value)) < 150  # a huge value is not echoed back whole


def test_longest_duration() -> None:
    assert parse_duration("999999999d") == timedelta(days=999999999)


def test_duration_round_trip() -> None:
    assert format_duration(parse_duration("2d3h4m5s")) == "2d3h4m5s"


@pytest.mark.parametrize(("uri", "expected"), [
    (f"postgresql://mlflow:{PASSWORD}@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    (f"mysql+pymysql://u:{PASSWORD}@h/d?x=1", "mysql+pymysql://u:***@h/d?x=1"),
    # a user without a password could be a token: the redaction module masks it too
    ("postgresql://mlflow@db/mlflow", "postgresql://***@db/mlflow"),
    ("sqlite:////data/a.sqlite", "sqlite:////data/a.sqlite"),
    # SQLAlchemy reads 'pa/ss' as the password; a URL pattern alone would stop at the '/'
    ("postgresql://u:pa/ss@db/mlflow", "postgresql://u:***@db/mlflow"),
])
def test_config_redacts_its_store_uri(uri: str, expected: str) -> None:
    assert ServerConfig(backend_store_uri=uri).redact(uri) == expected


def test_redact_removes_password_and_token_anywhere() -> None:
    config = ServerConfig(backend_store_uri=f"postgresql://u:{PASSWORD}@h/d", token="tok-123456")
    text = config.redact(f"failed on postgresql://u:{PASSWORD}@h/d with pw {PASSWORD} tok-123456")
    assert PASSWORD not in text and "tok-123456" not in text
    assert "postgresql://u:***@h/d" in text


def test_relative_sqlite_and_artifact_paths_become_absolute(tmp_path: Path,
                                                            monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = ServerConfig()
    assert config.sqlite_path() == tmp_path / "data/mlflow/standalone/store/mydb.sqlite"
    assert config.artifacts_uri() == str(tmp_path / "data/mlflow/standalone/artifacts")
    assert ServerConfig(artifacts_destination="s3://bucket/x").artifacts_uri() == "s3://bucket/x"


def test_bare_postgresql_uses_the_shipped_driver() -> None:
    config = ServerConfig(backend_store_uri=f"postgresql://u:{PASSWORD}@h/d")
    assert config.store_uri() == f"postgresql+psycopg2://u:{PASSWORD}@h/d"


@pytest.mark.parametrize(("uri", "message"), [
    ("not a url", "is not a SQLAlchemy database URL"),
    ("./mlruns", "is not a SQLAlchemy database URL"),
    ("file:///tmp/mlruns", "the model registry needs one of"),
    ("sqlite://", "in-memory"),
])
def test_unusable_store_uris(uri: str, message: str) -> None:
    with pytest.raises(StepError, match=message) as caught:
        ServerConfig(backend_store_uri=uri).store_url()
    assert str(caught.value).startswith("MLFLOW_BACKEND_STORE_URI / --backend-store-uri: ")


def _one_error_line(result, *needles: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/store/db.sqlite",
                "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
                "MLFLOW_HOST": "127.0.0.1", **values})
    return env


def unreachable_postgres() -> str:
    return f"postgresql://mlflow:{PASSWORD}@127.0.0.1:{free_port()}/mlflow"


@pytest.mark.parametrize("command", ["serve", "gc", "db-upgrade", "check"])
def test_unreachable_database_is_one_redacted_line(tmp_path: Path, warm_server_cli,
                                                   command: str) -> None:
    env = _env(tmp_path, MLFLOW_BACKEND_STORE_URI=unreachable_postgres())
    result = (warm_server_cli.run("server", command, env=env) if command == "serve"  # it execs
              else run_cli("server", command, env=env))
    line = _one_error_line(result, "MLFLOW_BACKEND_STORE_URI", "cannot connect",
                           "mlflow:***@127.0.0.1")
    assert PASSWORD not in result.stdout + result.stderr, line


@pytest.mark.parametrize(("values", "needles"), [
    ({"MLFLOW_BACKEND_STORE_URI": f"postgres ql://u:{PASSWORD}@h/d"},
     ("MLFLOW_BACKEND_STORE_URI", "not a SQLAlchemy database URL")),
    ({"MLFLOW_TRACKING_GC_TTL": "30days"}, ("MLFLOW_TRACKING_GC_TTL", "'30days'")),
    ({"MLFLOW_SERVER_REQUIRE_TOKEN": "true"}, ("MLFLOW_TRACKING_TOKEN", "not set")),
])
def test_bad_config_stops_serve_with_one_line(tmp_path: Path, warm_server_cli, values,
                                              needles) -> None:
    result = warm_server_cli.run("server", "serve", env=_env(tmp_path, **values))
    _one_error_line(result, *needles)
    assert PASSWORD not in result.stderr


def test_unwritable_artifact_directory(tmp_path: Path) -> None:
    """(In a fresh interpreter, where the other refused `serve`s fork from a warm one.)"""
    (tmp_path / "a-file").write_text("")
    result = run_cli("server", "serve", env=_env(
        tmp_path, MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "a-file" / "artifacts")),
        process=True)
    _one_error_line(result, "MLFLOW_ARTIFACTS_DESTINATION", "a-file is not a directory")
    assert not (tmp_path / "store").exists()


def test_flags_override_environment(tmp_path: Path) -> None:
    result = run_cli("server", "check", "--gc-ttl", "1d",
                     env=_env(tmp_path, MLFLOW_TRACKING_GC_TTL="bad"))
    assert result.returncode == 0, result.stderr
    assert "server check: ok" in result.stdout


def test_check_lists_every_problem(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = run_cli("server", "check", "--require-token", env=_env(
        tmp_path, MLFLOW_TRACKING_GC_TTL="soon",
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "a-file"),
        MLFLOW_BACKEND_STORE_URI=unreachable_postgres()))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[2].split(" / ")[0] for line in lines] == [
        "MLFLOW_TRACKING_GC_TTL", "MLFLOW_TRACKING_TOKEN", "MLFLOW_ARTIFACTS_DESTINATION",
        "MLFLOW_BACKEND_STORE_URI"]
    assert PASSWORD not in result.stderr


def test_every_needs_a_positive_duration(tmp_path: Path) -> None:
    _one_error_line(run_cli("server", "gc", "--every", "0s", env=_env(tmp_path)), "--every")
    _one_error_line(run_cli("server", "gc", "--every", "often", env=_env(tmp_path)), "--every")


@pytest.mark.parametrize("token", ["two words", "caf\u00e9-token", "tab\tinside"])
def test_token_must_fit_in_a_header(tmp_path: Path, warm_server_cli, token: str) -> None:
    result = warm_server_cli.run("server", "serve",
                                 env=_env(tmp_path, MLFLOW_TRACKING_TOKEN=token))
    _one_error_line(result, "MLFLOW_TRACKING_TOKEN", "printable ASCII")
    assert token not in result.stderr


@pytest.mark.parametrize("command", ["serve", "gc", "db-upgrade", "check"])
def test_store_that_is_not_a_database(tmp_path: Path, warm_server_cli, command: str) -> None:
    database = tmp_path / "store" / "db.sqlite"
    database.parent.mkdir()
    database.write_text("not a database\n")
    run = warm_server_cli.run if command == "serve" else run_cli  # serve execs MLflow
    _one_error_line(run("server", command, env=_env(tmp_path)),
                    "MLFLOW_BACKEND_STORE_URI", f"cannot read sqlite:///{database}",
                    "file is not a database")
    assert database.read_text() == "not a database\n"


@pytest.mark.parametrize("command", ["check", "gc"])
@pytest.mark.parametrize("ttl", ["1000000000d", "1" * 400 + "h", "-1d", "nan", "inf", "1e9d",
                                 "\u0661d"])
def test_unusable_ttl_is_one_line_naming_the_flag(tmp_path: Path, command: str, ttl: str) -> None:
    for args, env in (((), _env(tmp_path, MLFLOW_TRACKING_GC_TTL=ttl)),
                      (("--gc-ttl", ttl), _env(tmp_path))):
        result = run_cli("server", command, *args, env=env)
        _one_error_line(result, "MLFLOW_TRACKING_GC_TTL / --gc-ttl: ")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("every", "needle"), [
    ("99999999d", "must be at most 365d"), ("366d", "must be at most 365d"),
    ("1000000000d", "too long a duration"), ("-1s", "is not a duration"),
    ("nan", "is not a duration")])
def test_unusable_every_is_one_line(tmp_path: Path, every: str, needle: str) -> None:
    _one_error_line(run_cli("server", "gc", "--every", every, env=_env(tmp_path)),
                    "--every: ", needle)
    assert not (tmp_path / "store").exists()


def test_ttl_longer_than_the_epoch_purges_nothing(tmp_path: Path) -> None:
    """The longest TTL a timedelta holds reaches before 1970: a pass that purges nothing."""
    env = _env(tmp_path, MLFLOW_TRACKING_GC_TTL="999999999d")
    create_store(env["MLFLOW_BACKEND_STORE_URI"], env["MLFLOW_ARTIFACTS_DESTINATION"])
    for args in (("--dry-run",), ()):
        result = run_cli("server", "gc", *args, env=env)
        assert result.returncode == 0, result.stderr
        assert " 0 item(s) deleted more than 999999999d ago" in result.stdout
