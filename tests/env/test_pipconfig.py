"""Build-time pip configuration: sources, precedence, what is forwarded and what is shown
(how it is delivered: test_pip_secrets.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlflow_steps.core.errors import StepError
from mlflow_steps.env.pip_secrets import pip_conf
from mlflow_steps.env.pipconfig import collect_pip_config, pip_config_files


def environ(tmp_path: Path, **variables: str) -> dict[str, str]:
    """An environment whose user/XDG pip config files live under tmp_path."""
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_DIRS": str(tmp_path / "xdg"),
            "XDG_CONFIG_HOME": str(tmp_path / "home/.config"), **variables}


def collect(env: dict[str, str], **inputs):
    """collect_pip_config without this machine's /etc/pip.conf."""
    files = [p for p in pip_config_files(env) if p != Path("/etc/pip.conf")]
    return collect_pip_config(env, config_files=files, **inputs)


def test_config_file_then_env_then_inputs(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("CA")
    conf = tmp_path / "xdg" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"[global]\nindex-url = https://file.example/simple\ncert = {ca}\n"
                    "extra-index-url = file:///opt/pypi/simple https://extra.example/simple\n"
                    "[install]\ntrusted-host = file.example\n")
    pip = collect(environ(tmp_path))
    assert pip.index_url == "https://file.example/simple"
    assert pip.extra_index_urls == ("https://extra.example/simple",)
    assert pip.skipped == ("file:///opt/pypi/simple",)
    assert pip.trusted_hosts == ("file.example",) and pip.ca_bundle == ca
    env_pip = collect(environ(tmp_path, PIP_INDEX_URL="https://env.example/simple"))
    assert env_pip.index_url == "https://env.example/simple"
    explicit = collect(environ(tmp_path, PIP_INDEX_URL="https://env.example/simple"),
                                  index_url="https://input.example/simple")
    assert explicit.index_url == "https://input.example/simple"


def test_credentials_stay_in_the_secret_file_only(tmp_path: Path) -> None:
    pip = collect(environ(
        tmp_path, PIP_INDEX_URL="https://bob:tok3n@mirror.example/simple",
        PIP_EXTRA_INDEX_URL="https://amy:pw9@extra.example/simple"))
    assert "tok3n" in pip_conf(pip, None) and "pw9" in pip_conf(pip, None)
    index, extras = pip.public_urls()
    assert index == "https://mirror.example/simple"
    assert extras == ("https://extra.example/simple",)
    assert "tok3n" not in pip.describe() and "pw9" not in pip.describe()


def test_ca_target_and_empty(tmp_path: Path) -> None:
    assert collect(environ(tmp_path)).empty
    ca = tmp_path / "ca.pem"
    ca.write_text("CA")
    pip = collect(environ(tmp_path, PIP_CERT=str(ca)))
    assert pip_conf(pip, "/run/secrets/pip-ca.pem") == "[global]\ncert = /run/secrets/pip-ca.pem\n"
    with pytest.raises(StepError, match=r"CA bundle '/nope\.pem' not found"):
        collect(environ(tmp_path, PIP_CERT="/nope.pem"))


@pytest.mark.parametrize("variable, value", [
    ("PIP_INDEX_URL", "https://bob:{secret}@mirror.example:99999/simple"),
    ("PIP_INDEX_URL", "https://bob:{secret}@:80/simple"),
    ("PIP_EXTRA_INDEX_URL", "https://a.example/s https://{secret}@[::1/simple"),
    ("PIP_INDEX_URL", "https://mirror.example:port/simple?token={secret}"),
])
def test_bad_index_url_is_one_redacted_line(tmp_path: Path, variable: str, value: str) -> None:
    """hash and render fold the index into the tag: a bad URL stops both, naming the input."""
    from support.helpers import EXAMPLE, run_cli

    secret = "hunter2-very-secret"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
           "PIP_CONFIG_FILE": os.devnull, variable: value.format(secret=secret)}
    for args in (["hash", str(EXAMPLE)], ["render", str(EXAMPLE), "-o", str(tmp_path / "o")]):
        result = run_cli(*args, env=env)
        assert result.returncode == 2 and result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mlflow-steps: error: {variable}: ")
        assert secret not in result.stderr and "usable index URL" in lines[0]
    assert not (tmp_path / "o").exists()
