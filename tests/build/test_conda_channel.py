"""The local conda channel (tests/support/conda_channel.py) is real: py-rattler solves and
installs it.

The environments are solved for ``conda-forge`` by name, as an unmodified conda.yaml names it,
with the channel alias, an HTTP mirror or a rattler config file pointing at the local channel.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from support.conda_channel import (
    CHANNEL_NAME,
    PLACEHOLDER,
    LocalChannel,
    create_environment,
    run_rattler,
    serve_channel,
    solve,
    write_channel_config,
)
from support.helpers import tiny_wheel

SPECS = ["python=3.11", "pip", "six", "markupsafe"]
# The prefix's python must not see this machine's pip configuration or environment.
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PIP_CONFIG_FILE": os.devnull,
             "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def environment(conda_channel, tmp_path_factory) -> tuple[Path, list[dict]]:
    prefix = tmp_path_factory.mktemp("conda-env") / "env"
    records = create_environment(conda_channel, SPECS, prefix)
    return prefix, records


def run(prefix: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(prefix / "bin" / args[0]), *args[1:]], capture_output=True,
                          text=True, env=CLEAN_ENV, timeout=120, check=True, **kwargs)


def repodata(channel: LocalChannel, subdir: str) -> dict[str, dict]:
    data = json.loads((channel.path / subdir / "repodata.json").read_text())
    return {**data["packages"], **data.get("packages.conda", {})}


def archive_json(channel: LocalChannel, subdir: str, file_name: str, *members: str) -> list:
    """The JSON ``members`` of a package archive (one pass over the compressed stream)."""
    found = {}
    with tarfile.open(channel.path / subdir / file_name, "r:bz2") as tar:
        for info in tar:
            if info.name in members:
                handle = tar.extractfile(info)
                assert handle is not None, info.name
                found[info.name] = json.load(handle)
            if len(found) == len(members):
                break
    return [found[member] for member in members]


def test_channel_is_indexed_with_noarch_and_linux64(conda_channel):
    linux = repodata(conda_channel, "linux-64")
    noarch = repodata(conda_channel, "noarch")
    assert {r["name"] for r in linux.values()} == {"python", "python_abi", "markupsafe"}
    assert sorted((r["name"], r["version"]) for r in noarch.values()) == [
        ("packaging", "26.4"), ("pip", "26.3"), ("probe-data", "1.0"), ("six", "1.16.0"),
        ("six", "1.17.0")]
    assert all(r["subdir"] == "noarch" for r in noarch.values())
    wheels = [r for r in noarch.values() if r["name"] != "probe-data"]
    assert all(r["noarch"] == "python" and r["depends"][0].startswith("python")
               for r in wheels)
    probe = next(r for r in noarch.values() if r["name"] == "probe-data")
    assert (probe["noarch"], probe["depends"]) == ("generic", [])

    python = next(r for r in linux.values() if r["name"] == "python")
    assert python["version"].startswith("3.11.")
    assert python["build"].endswith("_cpython") and "noarch" not in python
    assert python["constrains"] == ["python_abi 3.11.* *_cp311"]
    abi = next(r for r in linux.values() if r["name"] == "python_abi")
    assert (abi["version"], abi["build"]) == ("3.11", "8_cp311")
    markupsafe = next(r for r in linux.values() if r["name"] == "markupsafe")
    assert markupsafe["depends"] == ["python >=3.11,<3.12.0a0", "python_abi 3.11.* *_cp311"]
    assert all(len(r["sha256"]) == 64 and r["size"] > 0 for r in [*linux.values(),
                                                                  *noarch.values()])


def test_packages_carry_conda_metadata(conda_channel):
    python_file = next(n for n in repodata(conda_channel, "linux-64") if n.startswith("python-"))
    index, paths_json = archive_json(conda_channel, "linux-64", python_file, "info/index.json",
                                     "info/paths.json")
    assert {"name", "version", "build", "build_number", "depends", "subdir"} <= set(index)
    assert index["subdir"] == "linux-64" and "noarch" not in index
    paths = {p["_path"]: p for p in paths_json["paths"]}
    assert paths["bin/python3.11"]["path_type"] == "hardlink"
    assert len(paths["bin/python3.11"]["sha256"]) == 64
    assert paths["bin/python"]["path_type"] == paths["bin/python3"]["path_type"] == "softlink"
    assert paths["bin/pydoc3.11"]["prefix_placeholder"] == PLACEHOLDER
    assert "lib/python3.11/os.py" in paths and "lib/python3.11/sitecustomize.py" in paths
    assert "lib/python3.11/EXTERNALLY-MANAGED" not in paths
    assert any(p.startswith("lib/python3.11/lib-dynload/_ssl.") for p in paths)

    pip_file = next(n for n in repodata(conda_channel, "noarch") if n.startswith("pip-"))
    link, pip_paths = archive_json(conda_channel, "noarch", pip_file, "info/link.json",
                                   "info/paths.json")
    assert link["noarch"]["type"] == "python"
    assert any(ep.startswith("pip = pip._internal") for ep in link["noarch"]["entry_points"])
    assert all(p["_path"].startswith("site-packages/") for p in pip_paths["paths"])


def test_environment_solved_as_conda_forge_and_installed(conda_channel, environment):
    prefix, records = environment
    assert sorted(r["name"] for r in records) == [
        "markupsafe", "pip", "python", "python_abi", "six"]
    assert all(r["url"].startswith(f"{conda_channel.alias_url}{CHANNEL_NAME}/")
               for r in records)
    six = next(r for r in records if r["name"] == "six")
    assert six["version"] == "1.17.0"  # the newest of the two

    for record in records:
        dist = f"{record['name']}-{record['version']}-{record['build']}"
        installed = json.loads((prefix / "conda-meta" / f"{dist}.json").read_text())
        assert installed["sha256"] == record["sha256"]
        assert bool(installed["files"]) == (record["name"] != "python_abi"), dist

    out = run(prefix, "python", "-c", """if True:
        import encodings, json, sys, sysconfig
        import ctypes, sqlite3, ssl, venv
        import markupsafe, pip, six
        import markupsafe._speedups as speedups
        print(json.dumps({"prefix": sys.prefix, "version": list(sys.version_info[:2]),
                          "purelib": sysconfig.get_paths()["purelib"],
                          "six": six.__file__, "speedups": speedups.__file__,
                          "escaped": str(markupsafe.escape("<a>")), "pip": pip.__version__,
                          "sqlite": sqlite3.sqlite_version, "ssl": ssl.OPENSSL_VERSION}))
    """).stdout
    facts = json.loads(out)
    site = str(prefix / "lib/python3.11/site-packages")
    assert facts["prefix"] == str(prefix)
    assert facts["version"] == [3, 11]
    assert facts["purelib"] == site
    assert facts["six"] == f"{site}/six.py"
    assert facts["speedups"].startswith(f"{site}/markupsafe/_speedups.cpython-311-")
    assert facts["escaped"] == "&lt;a&gt;"
    assert facts["pip"] == "26.3"

    # noarch entry points and prefix placeholders are written for this prefix.
    assert f"from {site}/pip" in run(prefix, "pip", "--version").stdout
    assert (prefix / "bin/pydoc3.11").read_text().startswith(f"#!{prefix}/bin/python3.11\n")
    assert "pydoc" in run(prefix, "pydoc3.11", "-k", "pydoc_data").stdout


def test_pip_installs_into_the_environments_site_packages(environment, tmp_path):
    prefix, _ = environment
    run(prefix, "pip", "install", "--no-deps", str(tiny_wheel(tmp_path)))
    assert (prefix / "lib/python3.11/site-packages/tiny_conda_probe.py").is_file()
    assert not (prefix / "local").exists()
    assert run(prefix, "python", "-c", "import tiny_conda_probe as t; print(t.VALUE)",
               cwd=tmp_path).stdout.strip() == "42"
    run(prefix, "pip", "uninstall", "--yes", "tiny_conda_probe")


def test_venv_and_ensurepip_work_from_the_environment(environment, tmp_path):
    prefix, _ = environment
    assert run(prefix, "python", "-c", "import ensurepip; print(ensurepip.version())"
               ).stdout.strip() == "22.3.1"
    run(prefix, "python", "-m", "venv", "--without-pip", str(tmp_path / "venv"))
    out = run(tmp_path / "venv", "python", "-c",
              "import sys; print(sys.prefix, sys.base_prefix)").stdout.split()
    assert out == [str(tmp_path / "venv"), str(prefix)]


def test_solver_honours_pins_and_reports_conflicts(conda_channel):
    records = solve(conda_channel, ["python=3.11", "six=1.16", "packaging"])
    assert {r["name"]: r["version"] for r in records}["six"] == "1.16.0"
    assert {r["name"] for r in records} == {"python", "six", "packaging"}
    with pytest.raises(RuntimeError, match="python"):
        solve(conda_channel, ["python=3.12", "six"])


def test_http_mirror_keeps_conda_forge_urls(conda_channel, tmp_path):
    with serve_channel(conda_channel) as url:
        records = create_environment(
            conda_channel, ["python=3.11", "six"], tmp_path / "env",
            mirrors={f"https://conda.anaconda.org/{CHANNEL_NAME}": [f"{url}/{CHANNEL_NAME}"]})
    assert all(r["url"].startswith(f"https://conda.anaconda.org/{CHANNEL_NAME}/")
               for r in records)
    assert run(tmp_path / "env", "python", "-c", "import six; print(six.__version__)"
               ).stdout.strip() == "1.17.0"


def test_written_config_points_conda_forge_at_the_channel(conda_channel, tmp_path):
    with serve_channel(conda_channel) as url:
        files = write_channel_config(conda_channel, tmp_path / "config", base_url=url)
        records = solve(None, SPECS, config=files["config.toml"])
        by_alias = solve(None, ["six"], alias=yaml.safe_load(
            files["condarc"].read_text())["channel_alias"])
    assert sorted(r["name"] for r in records) == [
        "markupsafe", "pip", "python", "python_abi", "six"]
    assert all(r["url"].startswith(f"https://conda.anaconda.org/{CHANNEL_NAME}/")
               for r in records)
    assert by_alias[0]["url"].startswith(f"{url}/{CHANNEL_NAME}/noarch/six-1.17.0-")
    local = write_channel_config(conda_channel, tmp_path / "local")
    assert yaml.safe_load(local["condarc"].read_text())["channel_alias"] == conda_channel.alias_url


def test_server_stops_with_its_context(conda_channel):
    with (serve_channel(conda_channel) as url,
          urllib.request.urlopen(f"{url}/{CHANNEL_NAME}/noarch/repodata.json",
                                 timeout=10) as response):
        assert json.load(response)["info"]["subdir"] == "noarch"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/{CHANNEL_NAME}/noarch/repodata.json", timeout=5)


def test_rattler_child_failures_raise():
    with pytest.raises(RuntimeError, match="boom"):
        run_rattler("async def main(payload):\n    raise ValueError('boom')\n")
    assert run_rattler("async def main(payload):\n    return payload * 2\n", 21) == 42
