"""Conda environments with real conda packages, solved and installed with rattler (no conda)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.pylock import Pylock
from packaging.utils import canonicalize_name
from support.conda_channel import conda_lock_yaml
from support.helpers import EXAMPLE, run_cli
from support.image_checks import check_runtime_image, layer_files
from support.synthetic_base import build

from mlflow_steps.build.conda_install import CondaChannels, cache_dir
from mlflow_steps.build.direct.installed import distributions, sbom_json
from mlflow_steps.build.dockerfile import write_context
from mlflow_steps.build.image_plan import image_plan
from mlflow_steps.build.inspect import read_image
from mlflow_steps.core.errors import StepError
from mlflow_steps.env.hashing import SOURCE_DATE_EPOCH, env_tag
from mlflow_steps.env.spec import BuildOptions, resolve_env
from mlflow_steps.image.client import RegistryClient

MLPROJECT = "conda_env: conda.yaml\nentry_points:\n  main:\n    command: python train.py\n"
CONDA_PACKAGES = ["python=3.11", "pip", "six>=1.17", "markupsafe", "probe-data"]
TOKEN = "chan-tok-" + os.urandom(6).hex()


def conda_yaml(*pip: str, packages: list[str] = CONDA_PACKAGES) -> str:
    dependencies: list = [*packages, {"pip": list(pip)}] if pip else list(packages)
    return yaml.safe_dump({"channels": ["conda-forge"], "dependencies": dependencies})


def staged(codeset_files: dict[str, str], tmp_path: Path, channel) -> tuple[Path, str]:
    codeset = tmp_path / "cs"
    codeset.mkdir()
    for name, text in {"MLproject": MLPROJECT, **codeset_files}.items():
        (codeset / name).write_text(text)
    _, spec = resolve_env(codeset, BuildOptions())
    out = write_context(image_plan(spec), tmp_path / "ctx",
                        conda_channel_alias=channel.alias_url)
    return out, env_tag(spec)


def test_conda_yaml_is_installed_as_the_image_prefix(conda_channel, tmp_path: Path) -> None:
    out, _ = staged({"conda.yaml": conda_yaml("requests")}, tmp_path, conda_channel)
    env = out / "conda-env"
    names = {json.loads(p.read_text())["name"] for p in (env / "conda-meta").glob("*.json")}
    assert names == {"python", "python_abi", "pip", "six", "markupsafe", "probe-data"}
    assert (env / "bin/pip").read_text().startswith("#!/opt/env/bin/python")
    assert (env / "lib/python3.11/site-packages/six.py").is_file()
    builder_paths = [str(tmp_path).encode(), f"{cache_dir(os.environ)}/".encode()]
    for path in env.rglob("*"):  # no builder path anywhere: only /opt/env
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not [p for p in builder_paths if p in data], path
    six = json.loads(next((env / "conda-meta").glob("six-*.json")).read_text())
    assert six["url"] == f"{conda_channel.url}/noarch/{six['fn']}"
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY conda-env/ /opt/env/" in dockerfile and "conda create" not in dockerfile
    assert "FROM python:3.11-slim" in dockerfile
    assert "requests" in (out / "env/requirements.txt").read_text()


def test_conda_lock_installs_exactly_the_locked_packages(conda_channel, tmp_path: Path) -> None:
    from support.conda_channel import solve

    records = solve(conda_channel, ["python=3.11", "six==1.16.0"])
    out, tag = staged({"conda-lock.yml": conda_lock_yaml({"linux-64": records})}, tmp_path,
                      conda_channel)
    metas = [json.loads(p.read_text()) for p in (out / "conda-env/conda-meta").glob("*.json")]
    assert {(m["name"], m["version"]) for m in metas} >= {("six", "1.16.0")}
    assert {m["sha256"] for m in metas} == {r["sha256"] for r in records}
    # The tag is the locked packages with their hashes: another hash, another tag.
    changed = [dict(r, sha256="0" * 64) if r["name"] == "six" else r for r in records]
    codeset = tmp_path / "cs"
    (codeset / "conda-lock.yml").write_text(conda_lock_yaml({"linux-64": changed}))
    _, spec = resolve_env(codeset, BuildOptions())
    assert env_tag(spec) != tag
    with pytest.raises(StepError, match=r"six-1\.16\.0-.*: downloaded file does not match its "
                                        r"sha256"):
        write_context(image_plan(spec), tmp_path / "ctx2",
                      conda_channel_alias=conda_channel.alias_url)
    assert not (tmp_path / "ctx2").exists()


PIXI_TOML = """\
[workspace]
channels = ["conda-forge"]
platforms = ["linux-64"]

[dependencies]
python = "3.11.*"
six = "==1.16.0"

[pypi-dependencies]
idna = "*"
"""


def test_pixi_lock_installs_exactly_the_locked_packages(conda_channel, tmp_path: Path) -> None:
    """A pixi.lock's conda part goes through the same rattler install as a conda-lock's;
    its PyPI part is pip's, hash-checked."""
    from support.conda_channel import IDNA, write_pixi_lock

    lock = tmp_path / "pixi.lock"
    records = write_pixi_lock(conda_channel, ["python=3.11", "six==1.16.0"], lock,
                              pypi=(IDNA,))
    out, _ = staged({"MLproject": MLPROJECT.replace("conda_env: conda.yaml\n", ""),
                     "pixi.toml": PIXI_TOML, "pixi.lock": lock.read_text()},
                    tmp_path, conda_channel)
    metas = [json.loads(p.read_text()) for p in (out / "conda-env/conda-meta").glob("*.json")]
    assert sorted((m["name"], m["version"], m["sha256"]) for m in metas) == sorted(
        (r["name"], r["version"], r["sha256"]) for r in records)
    assert (out / "env/requirements.lock.txt").read_text() == (
        f"idna @ {IDNA[2]} --hash=sha256:{IDNA[3]}\n")


def test_every_conda_package_is_readable_and_recorded(conda_channel, tmp_path: Path) -> None:
    """COPY keeps the context's modes: conda-meta (rattler writes it 0600), a file an archive
    carries 0600 and rattler's 0775 entry points are 0644/0755. The lock and the SBOM, as the
    image build finishes them (merge.py, run by the environment's interpreter as there),
    list every conda package: python, python_abi, probe-data (no Python in it) too."""
    out, _ = staged({"conda.yaml": conda_yaml()}, tmp_path, conda_channel)
    env = out / "conda-env"
    modes = {path.relative_to(env).as_posix(): stat.S_IMODE(path.lstat().st_mode)
             for path in env.rglob("*") if not path.is_symlink()}
    assert {mode for mode in modes.values()} == {0o644, 0o755}
    metas = sorted((env / "conda-meta").glob("*.json"))
    assert {modes[f"conda-meta/{path.name}"] for path in metas} == {0o644}
    assert modes["share/probe-data/probe.txt"] == 0o644
    assert modes["bin/probe-data"] == modes["bin/pip"] == modes["conda-meta"] == 0o755

    # what the build's last step has: uv pip freeze's lines and cyclonedx-py's SBOM of the
    # Python distributions (the library it uses, as the direct builder writes it)
    dists = distributions(env / "lib/python3.11/site-packages")
    frozen, lock, sbom = tmp_path / "installed.txt", tmp_path / "lock.txt", tmp_path / "sbom"
    frozen.write_text("".join(f"{canonicalize_name(d.metadata['Name'])}=={d.version}\n"
                              for d in dists))
    sbom.write_text(sbom_json(dists, SOURCE_DATE_EPOCH))
    # ... and what pip (uv) installed on top: the only line of the PEP 751 record's input
    uv_dist = env / "lib/python3.11/site-packages/extra_pkg-1.0.dist-info"
    uv_dist.mkdir()
    (uv_dist / "INSTALLER").write_text("uv\n")
    with frozen.open("a") as handle:
        handle.write("extra-pkg==1.0\nmlflow-steps @ file:///opt/mlflow-steps-build/t.whl\n")
    record, pip_part = out / "conda-record", tmp_path / "environment.txt"
    subprocess.run([str(env / "bin/python"), "-I", "-S", str(record / "merge.py"), str(record),
                    str(frozen), str(lock), str(sbom), str(pip_part)], check=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin"})
    assert pip_part.read_text() == "extra-pkg==1.0\n"

    installed = {meta["name"]: meta for meta in map(json.loads, map(Path.read_text, metas))}
    assert {"python", "python_abi", "probe-data", "six"} <= installed.keys()
    lines = lock.read_text().splitlines()
    assert lines[1:len(installed) + 1] == [f"{meta['url']}#sha256:{meta['sha256']}"
                                           for meta in installed.values()]
    assert {"six==1.17.0", "markupsafe==3.0.4", "pip==26.3"} <= set(lines)  # as before

    document = json.loads(sbom.read_text())
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.read_text()) is None
    purls = {c["purl"].split("?")[0]: c for c in document["components"]}
    for name in ("python", "python_abi", "probe-data", "six"):
        component = purls[f"pkg:conda/{name}@{installed[name]['version']}"]
        assert f"build={installed[name]['build']}" in component["purl"]
        assert component["hashes"] == [{"alg": "SHA-256",
                                        "content": installed[name]["sha256"]}]
    assert "pkg:pypi/six@1.17.0" in purls  # the Python distributions, as before
    needs = {d["ref"]: d.get("dependsOn", []) for d in document["dependencies"]}
    assert sorted(needs[purls["pkg:conda/markupsafe@3.0.4"]["bom-ref"]]) == sorted(
        purls[f"pkg:conda/{n}@{installed[n]['version']}"]["bom-ref"]
        for n in ("python", "python_abi"))


@pytest.mark.parametrize("packages, words", [
    (["python=3.11", "six>=99"], ("conda solve failed", "six")),
    (["python=3.11", "not-a-package-here"], ("conda solve failed", "not-a-package-here")),
])
def test_unsatisfiable_or_missing_is_one_line(conda_channel, tmp_path: Path, packages,
                                              words) -> None:
    codeset = tmp_path / "cs"
    codeset.mkdir()
    (codeset / "MLproject").write_text(MLPROJECT)
    (codeset / "conda.yaml").write_text(conda_yaml(packages=packages))
    result = run_cli("render", str(codeset), "-o", str(tmp_path / "out"),
                     env={**os.environ, "CONDA_CHANNEL_ALIAS": conda_channel.alias_url})
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("style", ["token path", "basic auth"])
def test_channel_alias_credentials_stay_on_the_builder(conda_channel, tmp_path: Path,
                                                       style: str) -> None:
    """A token in the alias (anaconda.org style) or user:password@ (a private mirror)
    reaches the channel, not the output."""
    from support.conda_channel import serve_channel

    codeset = tmp_path / "cs"
    codeset.mkdir()
    (codeset / "MLproject").write_text(MLPROJECT)
    (codeset / "conda.yaml").write_text(conda_yaml())
    server = serve_channel(conda_channel, token=TOKEN) if style == "token path" else \
        serve_channel(conda_channel, basic_auth=f"alice:{TOKEN}")
    with server as alias:
        if style == "basic auth":
            alias = alias.replace("http://", f"http://alice:{TOKEN}@")
            wrong = alias.replace(TOKEN, "wrong-password")
            refused = run_cli("render", str(codeset), "-o", str(tmp_path / "x"),
                              "--conda-channel-alias", wrong)
            assert refused.returncode == 2 and "conda solve failed" in refused.stderr
            assert "wrong-password" not in refused.stderr and len(refused.stderr.splitlines()) == 1
        assert TOKEN in alias
        result = run_cli("render", str(codeset), "-o", str(tmp_path / "out"),
                         "--conda-channel-alias", alias,
                         env={**os.environ, "MLFLOW_STEPS_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    for path in [*(tmp_path / "out").rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if path.is_file():  # the context, and what the build keeps (packages, not URLs)
            assert TOKEN.encode() not in path.read_bytes(), path
    hashed = run_cli("hash", str(codeset), env={**os.environ, "CONDA_CHANNEL_ALIAS": alias})
    plain = run_cli("hash", str(codeset))
    assert hashed.stdout == plain.stdout  # the channel configuration is not in the tag


def test_a_direct_conda_build_keeps_the_channel_token_on_the_builder(
        conda_channel, registry, synthetic_base, no_engine, warm_cache, tmp_path: Path) -> None:
    """The direct builder (no engine) solves and installs through a token alias: the token
    reaches the channel only, not the output, a layer, or a file left in the cache."""
    from support.conda_channel import serve_channel

    codeset = tmp_path / "cs"
    codeset.mkdir()
    (codeset / "MLproject").write_text(MLPROJECT)
    (codeset / "conda.yaml").write_text(conda_yaml())
    cache = warm_cache(tmp_path / "cache")
    with serve_channel(conda_channel, token=TOKEN) as alias:
        result = build(codeset, registry, synthetic_base, "direct/conda",
                       "--conda-channel-alias", alias,
                       env={**no_engine, "MLFLOW_STEPS_CACHE": cache})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[direct] " in result.stderr and "does not apply" not in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    client = RegistryClient(registry.address)
    _, manifest = client.manifest("direct/conda", result.stdout.strip().rsplit(":", 1)[1])
    files = layer_files(client, "direct/conda", manifest)
    assert not [name for name, data in files.items() if TOKEN.encode() in data]
    metas = [json.loads(data) for name, data in files.items()
             if name.startswith("opt/env/conda-meta/") and name.endswith(".json")]
    assert sorted(meta["name"] for meta in metas) == [
        "markupsafe", "pip", "probe-data", "python", "python_abi", "six"]
    assert all(meta["url"].startswith("http://127.0.0.1:") and "/t/" not in meta["url"]
               for meta in metas)
    lock = files["opt/mlflow-steps-build/lock.txt"].decode()
    assert lock.count("#sha256:") == 6 and "\nmlflow-skinny==" in lock
    left = [path for path in Path(cache).rglob("*")
            if path.is_file() and TOKEN.encode() in path.read_bytes()]
    assert not left


def test_conda_image_builds_trains_and_skips(docker_engine, registry, base_image,
                                              conda_channel, mlflow_server,
                                              tmp_path: Path) -> None:
    import mlflow
    from support.runtime_env import PLAIN_MODEL_JOB, run_step

    # the example's MLproject; a pip part and a job small enough for an engine build (the
    # example's scientific stack through Docker: tests/build/test_builder_e2e.py)
    codeset = Path(shutil.copytree(EXAMPLE, tmp_path / "codeset"))
    (codeset / "conda.yaml").write_text(conda_yaml("idna==3.7"))
    (codeset / "train.py").write_text(PLAIN_MODEL_JOB)
    env = {**docker_engine.env(), "FUSEML_REGISTRY": registry.address,
           "FUSEML_BASE_IMAGE": base_image, "FUSEML_BUILDER": "docker",
           "CONDA_CHANNEL_ALIAS": conda_channel.alias_url}
    first = run_cli("build", str(codeset), env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    reference = first.stdout.strip()
    labels = check_runtime_image(docker_engine, reference, imports=("idna", "mlflow"),
                                 locked=("idna", "mlflow-skinny"))
    assert labels["io.mlflow-steps.strategy"] == "conda"
    probe = docker_engine.cli(
        "run", "--rm", reference, "python", "-c",
        "import sys, six, markupsafe, idna; print(sys.prefix, sys.version.split()[0], "
        "six.__version__, markupsafe.__file__)", check=False)
    assert probe.returncode == 0, probe.stderr
    prefix, version, six_version, markupsafe = probe.stdout.split()
    assert (prefix, version, six_version) == ("/opt/env", "3.11.2", "1.17.0")
    assert markupsafe.startswith("/opt/env/lib/python3.11/site-packages/markupsafe/")
    # the runtime user reads conda-meta and every package's files (root's, 0644); the lock
    # and the SBOM list each conda package, then the Python distributions
    seen = docker_engine.cli(
        "run", "--rm", reference, "sh", "-c",
        "stat -c '%a %u %g' /opt/env/conda-meta/*.json /opt/env/share/probe-data/probe.txt "
        "| sort -u && /opt/env/bin/probe-data && grep -c '#sha256:' "
        "/opt/mlflow-steps-build/lock.txt && grep -c '^idna==' "
        "/opt/mlflow-steps-build/lock.txt && python -c 'import json, sys; print(*(c.get(\"purl\", "
        "\"\") for c in json.load(open(sys.argv[1]))[\"components\"]))' "
        "/opt/mlflow-steps-build/sbom.cdx.json", check=False)
    assert seen.returncode == 0, seen.stderr
    modes, data, conda_lines, idna_lines, purls = seen.stdout.splitlines()
    assert (modes, data, conda_lines, idna_lines) == ("644 0 0", "probe data", "6", "1")
    assert {purl.split("@")[0] for purl in purls.split()} >= {
        "pkg:conda/python", "pkg:conda/python_abi", "pkg:conda/probe-data", "pkg:conda/six",
        "pkg:pypi/six", "pkg:pypi/idna"}
    run = run_step(docker_engine, reference, codeset, tmp_path / "results",
                   f"MLFLOW_TRACKING_URI={mlflow_server.url}",
                   "FUSEML_MLFLOW_ENTRYPOINT_ARGS=C=0.5 max_iter=100")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "/models/m-" in (tmp_path / "results" / "model-url").read_text()
    run_id = re.search(r"mlflow-steps: run ([0-9a-f]{32}): ", run.stderr)[1]
    assert mlflow.MlflowClient(mlflow_server.url).get_run(run_id).data.params["six"] == (
        six_version)  # the conda package's, in the environment the entry point ran in
    again = run_cli("build", str(codeset), env={**env, "CONDA_CHANNEL_ALIAS": "file:///absent/"})
    assert again.returncode == 0 and "build skipped" in again.stderr
    assert again.stdout.strip() == reference


def test_pixi_lock_image_has_exactly_the_locked_packages(docker_engine, registry, base_image,
                                                          conda_channel, mlflow_server,
                                                          tmp_path: Path) -> None:
    """Built by an engine from a pixi.lock: its conda packages (the conda-lock path's
    install), its PyPI package at its locked URL; trained; skipped the second time."""
    import mlflow
    from support.conda_channel import IDNA, write_pixi_lock
    from support.runtime_env import PLAIN_MODEL_JOB, run_step

    codeset = tmp_path / "cs"
    codeset.mkdir()
    records = write_pixi_lock(conda_channel, ["python=3.11", "pip", "six==1.16.0",
                                              "markupsafe"], codeset / "pixi.lock",
                              pypi=(IDNA,))
    (codeset / "MLproject").write_text(MLPROJECT.replace("conda_env: conda.yaml\n", ""))
    (codeset / "pixi.toml").write_text(PIXI_TOML)
    (codeset / "train.py").write_text(PLAIN_MODEL_JOB)
    env = {**docker_engine.env(), "FUSEML_REGISTRY": registry.address,
           "FUSEML_BASE_IMAGE": base_image, "FUSEML_BUILDER": "docker"}
    first = run_cli("build", str(codeset), env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    reference = first.stdout.strip()
    probe = docker_engine.cli(
        "run", "--rm", reference, "sh", "-c",
        "python -c 'import six, markupsafe, mlflow, idna; print(six.__version__, "
        "idna.__version__)' && "
        "ls /opt/env/conda-meta && /opt/mlflow-steps/bin/mlflow-steps --version", check=False)
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.split()
    assert lines[:2] == ["1.16.0", "3.7"]
    # its PEP 751 record: what pip installed (the lock's PyPI part, MLflow added), valid
    pylock = read_image(reference, RegistryClient(registry.address)).pylock
    names = {package.name for package in Pylock.from_dict(tomllib.loads(pylock)).packages}
    assert {"idna", "mlflow-skinny", "boto3"} <= names
    assert not names & {"six", "markupsafe", "pip", "mlflow-steps"}
    assert sorted(name for name in lines if name.endswith(".json")) == sorted(
        r["file_name"].removesuffix(".tar.bz2") + ".json" for r in records)
    # The runtime step runs the entry point in the locked environment and finds its model.
    run = run_step(docker_engine, reference, codeset, tmp_path / "results",
                   f"MLFLOW_TRACKING_URI={mlflow_server.url}",
                   "FUSEML_MLFLOW_EXPERIMENT=pixi-lock")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "/models/m-" in (tmp_path / "results" / "model-url").read_text()
    run_id = re.search(r"mlflow-steps: run ([0-9a-f]{32}): ", run.stderr)[1]
    client = mlflow.MlflowClient(mlflow_server.url, mlflow_server.url)
    assert client.get_run(run_id).data.params["six"] == "1.16.0"
    again = run_cli("build", str(codeset), env=env)
    assert again.returncode == 0 and "build skipped" in again.stderr


def test_channel_alias_precedence_and_bad_values(tmp_path: Path) -> None:
    condarc = tmp_path / "condarc"
    condarc.write_text("channel_alias: https://rc.example/\n")
    base = {"HOME": str(tmp_path / "home"), "CONDARC": str(condarc)}
    assert CondaChannels.collect(base).alias == "https://rc.example/"
    assert CondaChannels.collect({**base, "CONDA_CHANNEL_ALIAS": "https://env.example"}).alias \
        == "https://env.example/"
    assert CondaChannels.collect(base, "file:///srv/mirror").alias == "file:///srv/mirror/"
    condarc.write_text("# channel_alias: commented out\n")
    assert CondaChannels.collect(base) == CondaChannels()
    for text, words in [("channel_alias: [1]\n", "expected a URL string"),
                        ("- a\n", "expected a YAML mapping"),
                        ("channel_alias: ftp://u:pw-123456@x/\n", r"not an http\(s\) or file"),
                        ("channel_alias: http://u:pw-123456@x:99999/\n", r"not an http\(s\)")]:
        condarc.write_text(text)
        with pytest.raises(StepError, match=words) as caught:
            CondaChannels.collect(base)
        assert "pw-123456" not in str(caught.value)


def test_pip_environments_never_read_the_conda_configuration(tmp_path: Path) -> None:
    """Only conda strategies resolve channels: a broken condarc does not stop a pip build."""
    (tmp_path / "condarc").write_text("- not a mapping\n")
    codeset = tmp_path / "cs"
    codeset.mkdir()
    (codeset / "MLproject").write_text(MLPROJECT.replace("conda_env: conda.yaml\n", ""))
    (codeset / "requirements.txt").write_text("six\n")
    result = run_cli("render", str(codeset), "-o", str(tmp_path / "out"),
                     env={**os.environ, "CONDARC": str(tmp_path / "condarc")})
    assert result.returncode == 0, result.stderr
