"""The one redaction module: no generated secret survives, and it never raises."""

from __future__ import annotations

import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.helpers import REPO, run_cli

from mlflow_steps.core.redaction import MASK, Redactor, has_credentials, redact
from mlflow_steps.workflow.extensions import Identity, load_registry
from mlflow_steps.workflow.loader import load_workflow
from mlflow_steps.workflow.tekton import TektonExport

# What may appear in a URL's user-info or a query value without ending it.
URL_SAFE = string.ascii_letters + string.digits + "-._~!$*+,;=%"
secrets = st.text(URL_SAFE.replace("%", ""), min_size=8, max_size=40)
hosts = st.sampled_from(["db", "tracking.example", "10.0.0.1", "[::1]", "h-1.corp"])
ports = st.sampled_from(["", ":5432", ":99999", ":abc", ":"])
schemes = st.sampled_from(["http", "https", "postgresql", "postgresql+psycopg2", "s3",
                           "git+https", "mysql"])
credential_keys = st.sampled_from(["access_token", "token", "private_token", "X-Amz-Signature",
                                   "sig", "api_key", "apikey", "password", "client_secret",
                                   "X-Goog-Credential", "auth"])
surroundings = st.text(string.printable, max_size=30)


@settings(max_examples=300)
@given(schemes, st.text(string.ascii_letters, min_size=1, max_size=8), secrets, hosts, ports,
       surroundings, surroundings)
def test_url_password_is_masked(scheme, user, secret, host, port, before, after) -> None:
    assume(secret not in before + user + after)
    text = f"{before} {scheme}://{user}:{secret}@{host}{port}/x {after}"
    assert secret not in redact(text)


@settings(max_examples=200)
@given(schemes, secrets, hosts, ports)
def test_token_as_user_is_masked(scheme, secret, host, port) -> None:
    # a secret that is also part of the text around it ('postgres' in 'postgresql://')
    # cannot be told from it
    assume(secret not in f"pkg @ {scheme}://{MASK}@{host}{port}/repo.git")
    assert secret not in redact(f"pkg @ {scheme}://{secret}@{host}{port}/repo.git")


@settings(max_examples=300)
@given(hosts, credential_keys, secrets.filter(lambda s: "&" not in s), surroundings)
def test_query_string_token_is_masked(host, key, secret, after) -> None:
    assume(secret not in after)
    text = f"https://{host}/simple/pkg.whl?x=1&{key}={secret}&y=2 {after}"
    assert secret not in redact(text)
    assert has_credentials(f"https://{host}/p?{key}={secret}")


@settings(max_examples=200)
@given(st.sampled_from(["MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD",
                        "db.password", "apiKey"]),
       secrets.filter(lambda s: not set(s) & set(",;&")))
def test_named_credentials_are_masked(name, secret) -> None:
    # a secret that is part of the text around it ('PGPASSWO') cannot be told from it
    assume(secret not in f"{name} Authorization: Bearer")
    for text in (f"{name}={secret}", f'{{"{name}": "{secret}"}}',
                 f"Authorization: Bearer {secret}"):
        assert secret not in redact(text)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=4, max_size=30).filter(lambda s: s.strip() == s and len(s) >= 4),
       surroundings, surroundings)
def test_known_secrets_are_masked_in_every_encoding(secret, before, after) -> None:
    from urllib.parse import quote

    redactor = Redactor([secret])
    for form in (secret, quote(secret), quote(secret, safe="")):
        assume(form not in before + after)
        assert form not in redactor(f"{before}{form}{after}")


@settings(max_examples=500)
@given(st.text())
def test_redact_never_raises(text) -> None:
    assert isinstance(redact(text, [text[:5], text]), str)


def test_ordinary_text_is_left_alone() -> None:
    for text in ("numpy==1.26.4", "http://127.0.0.1:5000/api/2.0", "tag 3f2a9c is missing",
                 "MLFLOW_TRACKING_TOKEN is not set", "registry host:5000/ns/img:tag"):
        assert redact(text) == text and not has_credentials(text)
    assert redact("https://bob:pw1234@h/x") == f"https://bob:{MASK}@h/x"


EXTENSIONS = """
id: mlflow-x
product: mlflow
version: 3.1.0
services:
  - id: tracking
    resource: mlflow-tracking
    endpoints:
      - url: {url}
        configuration: {{MLFLOW_TRACKING_URI: "{url}"}}
  - id: store
    resource: s3
    endpoints: [{{url: "http://s3.example"}}]
"""


@settings(max_examples=25, deadline=None)
@given(st.text(string.ascii_letters, min_size=1, max_size=6), secrets, credential_keys)
def test_exported_manifests_hold_no_credential(tmp_path_factory, user, secret, key) -> None:
    """Endpoint URLs with user-info or token parameters go to a Secret, as placeholders."""
    tmp = tmp_path_factory.mktemp("export")

    def exported(url: str) -> str:
        (tmp / "ext.yaml").write_text(EXTENSIONS.format(url=url))
        export = TektonExport(load_workflow(REPO / "workflows" / "mlflow-e2e.yaml"),
                              load_registry(tmp / "ext.yaml"), Identity("p", "u"))
        return yaml.dump_all([doc for docs in export.documents().values() for doc in docs])

    assume(secret not in exported("https://tracking.example"))  # e.g. 'MLprojec' is text
    for url in (f"https://{user}:{secret}@tracking.example", f"https://t.example/?{key}={secret}"):
        text = exported(url)
        assert secret not in text
        assert "secretKeyRef" in text


def test_env_verbose_masks_endpoint_credentials(tmp_path: Path) -> None:
    secret = "pa55-word-in-url"
    (tmp_path / "ext.yaml").write_text(
        EXTENSIONS.format(url=f"https://bob:{secret}@tracking.example"))
    result = run_cli("env", "--extensions", str(tmp_path / "ext.yaml"), "-v")
    assert result.returncode == 0, result.stderr
    assert secret not in result.stderr and MASK in result.stderr


def test_credential_names_are_read_by_their_parts() -> None:
    from mlflow_steps.core.redaction import is_secret_name

    for name in ("PGPASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID", "apiKey",
                 "X-Amz-Signature", "sig", "client_secret", "db.password", "authorization"):
        assert is_secret_name(name), name
    for name in ("design", "author", "keyword", "monkey", "MLFLOW_TRACKING_URI", "signal"):
        assert not is_secret_name(name), name
    assert redact("https://h/x?design=1&token=abcd") == f"https://h/x?design=1&token={MASK}"


def test_environment_secrets_skip_directories_and_switches() -> None:
    from mlflow_steps.core.redaction import secret_values

    environ = {"PWD": "/work/project", "OLDPWD": "/home/me", "DB_PWD": "s3cret-pw",
               "MLFLOW_SERVER_REQUIRE_TOKEN": "true", "MLFLOW_TRACKING_TOKEN": "tok-123456"}
    assert sorted(secret_values(environ)) == ["s3cret-pw", "tok-123456"]
