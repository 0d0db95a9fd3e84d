"""Dockerfile and build-context rendering."""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from support.helpers import EXAMPLE, REPO, run_cli

from mlflow_steps.build.dockerfile import render_dockerfile, write_context
from mlflow_steps.build.image_plan import OWN_LAYERS, TOOLING_WHEEL, image_plan
from mlflow_steps.core.errors import StepError
from mlflow_steps.env.hashing import env_tag
from mlflow_steps.env.pip_secrets import PipConfigDelivery
from mlflow_steps.env.spec import BuildOptions, resolve_env

LOCK = (REPO / "tests/data/conda-lock.yml").read_text()


def instructions(dockerfile: str) -> list[str]:
    """Instruction keywords in order (continuations folded)."""
    return [line.split()[0] for line in dockerfile.splitlines()
            if line and not line.startswith((" ", "#"))]


def spec_for(codeset, files, **options):
    return resolve_env(codeset(files), BuildOptions(**options))[1]


def plan_for(codeset, files, **options):
    return image_plan(spec_for(codeset, files, **options))


@pytest.mark.parametrize("files", [
    {"requirements.txt": "numpy\n"},
    {"conda.yaml": "dependencies: [python=3.11, numpy]\n"},
    {"conda-lock.yml": LOCK},
])
def test_layout_is_cache_friendly_and_non_root(codeset, files) -> None:
    spec = spec_for(codeset, files)
    dockerfile = render_dockerfile(image_plan(spec))
    keywords = instructions(dockerfile)
    runtime = dockerfile[dockerfile.index(f"\nFROM {spec.base_image}\n"):]
    assert keywords[0] == "FROM"
    tooling = runtime.index("--no-deps /opt/mlflow-steps-build/tooling/mlflow_steps-")
    # The environment's files come last: a requirements change re-runs no earlier step.
    assert runtime.index("RUN") < tooling < runtime.index("COPY env/")
    assert "uv pip check --quiet --python /opt/env/bin/python" in runtime[tooling:]
    assert keywords[-3:] == ["USER", "WORKDIR", "CMD"]
    assert "USER 1000" in dockerfile and "WORKDIR /srv/mlflow" in dockerfile
    # The image never touches the codeset mount point, which may be read-only at build time.
    assert "/project" not in dockerfile.replace('"run", "/project"]', "")
    assert "mkdir -p /srv/mlflow && chown 1000 /srv/mlflow" in dockerfile
    assert dockerfile.rstrip().endswith(
        'CMD ["/opt/mlflow-steps/bin/mlflow-steps", "run", "/project"]')
    assert env_tag(spec) in dockerfile
    # uv's cache is a build cache mount (never a layer).
    assert "--mount=type=cache,id=mlflow-steps-uv,target=/root/.cache/uv" in dockerfile
    assert "--mount=type=bind,source=tools/uv,target=/usr/local/bin/uv" in dockerfile
    if spec.strategy == "pip":
        assert keywords.count("FROM") == 2 and " AS resolve\n" in dockerfile
        assert "uv pip compile" in dockerfile and "pip install --no-cache-dir" not in dockerfile
        assert "uv venv --quiet --python python3 /opt/env" in runtime
    else:  # conda packages come installed in the context: no conda in any image
        assert keywords.count("FROM") == 1 and "COPY conda-env/ /opt/env/" in dockerfile
        assert "conda create" not in dockerfile and "conda env" not in dockerfile


def test_pip_environment_is_layered_by_package(codeset) -> None:
    """Large packages get layers of their own, before the rest; the environment files are
    not a parent of those layers, so a one-line change reuses them."""
    dockerfile = render_dockerfile(plan_for(codeset, {"requirements.txt": "numpy\n"}))
    runtime = dockerfile[dockerfile.index("\nFROM python:3.11-slim\n"):]
    layers = re.findall(r"COPY --from=resolve /layers/(\w+)\.txt", runtime)
    assert layers == [str(i) for i in range(1, len(OWN_LAYERS) + 1)] + ["rest"]
    resolve = dockerfile[:dockerfile.index("\nFROM python:3.11-slim\n")]
    assert "> /layers/1.txt" in resolve and "grep -v -i -E '^(nvidia[-_.]cudnn[^=]*|" in resolve
    before_rest = runtime[:runtime.index("/layers/rest.txt")]
    assert "source=env," not in before_rest and "COPY env/" not in before_rest


def test_resolved_pins_split_into_package_groups(codeset, tmp_path: Path) -> None:
    """The resolve stage's split, run by sh on pins as uv writes them: the CUDA wheels and
    triton each in the group the direct builder gives them (cusparselt not taken by the
    cusparse glob, the small nvidia-* together), each pin in exactly one file."""
    dockerfile = render_dockerfile(plan_for(codeset, {"requirements.txt": "torch\n"}))
    resolve = dockerfile[:dockerfile.index("\nFROM python:3.11-slim\n")]
    split = resolve[resolve.index("mkdir /layers"):].strip().split(" \\\n && ")
    pins = {"nvidia-cudnn-cu13": "9.24.0.43", "nvidia-cusparselt-cu13": "0.8.1",
            "nvidia-cusparse": "12.6.3.3", "nvidia-cublas-cu12": "12.8.4.1",
            "nvidia-curand": "10.4.0.35", "nvidia-nvtx": "13.0.85", "triton": "3.6.0",
            "torch": "2.14.1", "numpy": "2.4.1", "boto3": "1.40.0", "tabulate": "0.9.0"}
    (tmp_path / "lock.txt").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    script = " && ".join(split).replace("/tmp/lock.txt", str(tmp_path / "lock.txt")) \
        .replace("/layers", str(tmp_path / "layers"))
    subprocess.run(["sh", "-ec", script], check=True)
    picked = {f.stem: f.read_text().split() for f in (tmp_path / "layers").iterdir()}
    install = plan_for(codeset, {"requirements.txt": "torch\n"}).install
    expected: dict[str, list[str]] = {}
    for name, version in pins.items():
        group = install.own_layer_of(name)
        expected.setdefault("rest" if group is None else str(group + 1), []).append(
            f"{name}=={version}")
    assert {stem: names for stem, names in picked.items() if names} == expected
    groups = {" ".join(OWN_LAYERS[int(stem) - 1]) if stem != "rest" else stem: names
              for stem, names in expected.items()}
    assert groups["nvidia-cusparselt*"] == ["nvidia-cusparselt-cu13==0.8.1"]
    assert groups["nvidia-cusparse*"] == ["nvidia-cusparse==12.6.3.3"]
    assert groups["nvidia-*"] == ["nvidia-curand==10.4.0.35", "nvidia-nvtx==13.0.85"]
    assert groups["rest"] == ["tabulate==0.9.0"]


def test_install_layer_script(codeset, tmp_path: Path) -> None:
    out = write_context(plan_for(codeset, {"requirements.txt": "numpy\n"}), tmp_path / "ctx")
    script = out / "tools" / "install-layer"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "uv pip install --quiet --no-deps --python \"$python\" -r \"$lock\"" in text
    assert "-name tests -exec rm -rf" in text
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0


def test_context_files(codeset, tmp_path: Path) -> None:
    wheel = "./w/x-1.0-py3-none-any.whl"
    plan = plan_for(codeset, {"requirements.txt": f"-c pins.txt\nnumpy\n{wheel}\n",
                              "pins.txt": "numpy==1.26.4\n", "w/x-1.0-py3-none-any.whl": b"PK"})
    out = write_context(plan, tmp_path / "ctx")
    requirements = (out / "env/requirements.txt").read_text().splitlines()
    assert requirements == ["-c /opt/mlflow-steps-build/env/constraints.txt", "numpy",
                            "/opt/mlflow-steps-build/env/wheels/x-1.0-py3-none-any.whl",
                            "mlflow-skinny<4", "boto3"]
    assert (out / "env/constraints.txt").read_text() == "numpy==1.26.4\n"
    assert (out / "env/wheels/x-1.0-py3-none-any.whl").read_bytes() == b"PK"
    wheel = out / "tooling" / TOOLING_WHEEL
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = "mlflow_steps-0.1.0.dist-info"
        assert "mlflow_steps/cli/main.py" in names \
            and "mlflow_steps/build/templates/pip.Dockerfile.j2" \
            in names
        entry_points = archive.read(f"{info}/entry_points.txt")
        assert b"mlflow-steps = mlflow_steps.cli.main:main" in entry_points
        assert b"Requires-Dist: mlflow-skinny>=2.10,<4" in archive.read(f"{info}/METADATA")
        assert archive.testzip() is None and names[-1] == f"{info}/RECORD"
    again = write_context(plan, tmp_path / "ctx2")
    assert (again / "tooling" / TOOLING_WHEEL).read_bytes() == wheel.read_bytes()
    assert os.access(out / "tools" / "uv", os.X_OK)


def test_conda_and_lock_env_files(codeset) -> None:
    conda = plan_for(codeset, {"conda.yaml": "channels: [conda-forge]\n"
                                             "dependencies: [python=3.11, numpy]\n"})
    assert conda.install.files("/x")["environment.yml"] == (
        "channels:\n- conda-forge\ndependencies:\n- numpy\n- python 3.11.*\n- pip\n")
    lock = image_plan(resolve_env(codeset({"conda-lock.yml": LOCK}, "lock"), BuildOptions())[1])
    files = lock.install.files("/x")
    explicit = files["conda-explicit.txt"].splitlines()
    assert explicit[0] == "@EXPLICIT" and len(explicit) == 3
    assert all(re.search(r"\.conda#[0-9a-f]{32}$", line) for line in explicit[1:])
    assert "--hash=sha256:8abb2f1d" in files["requirements.lock.txt"]
    assert "--require-hashes" in render_dockerfile(lock)


def test_secret_mounts_prefix_pip_runs(codeset) -> None:
    plan = plan_for(codeset, {"requirements.txt": "numpy\n"})
    mounts = PipConfigDelivery(mounts=(("pip-config", "/etc/pip.conf"),))
    dockerfile = render_dockerfile(plan, mounts)
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN ")
            and "source=tools/uv" in line]
    # resolve, venv, one per own layer, the rest, the tooling
    assert len(runs) == len(OWN_LAYERS) + 4
    assert all("--mount=type=secret,id=pip-config,target=/etc/pip.conf set -a && " in line
               and "[ ! -f /run/secrets/uv.env ] || . /run/secrets/uv.env" in line
               for line in runs)


def test_output_dir_must_be_new_or_empty(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    plan = image_plan(resolve_env(EXAMPLE, BuildOptions())[1])
    with pytest.raises(StepError, match="not empty"):
        write_context(plan, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert (write_context(plan, tmp_path / "empty") / "Dockerfile").is_file()


def test_render_cli(tmp_path: Path) -> None:
    result = run_cli("render", str(EXAMPLE), "-o", str(tmp_path / "ctx"))
    assert result.returncode == 0, result.stderr
    tag = run_cli("hash", str(EXAMPLE)).stdout.strip()
    assert f"tag {tag}" in result.stdout
    assert f"io.mlflow-steps.env-tag=\"{tag}\"" in (tmp_path / "ctx/Dockerfile").read_text()


def test_inputs_come_from_fuseml_env_vars_and_empty_means_unset() -> None:
    import os

    env = dict(os.environ)
    default = run_cli("hash", str(EXAMPLE), env=env).stdout
    env["FUSEML_BASE_IMAGE"] = ""
    assert run_cli("hash", str(EXAMPLE), env=env).stdout == default
    env["FUSEML_BASE_IMAGE"] = "localhost:5000/library/python:3.11-slim"
    explained = run_cli("hash", str(EXAMPLE), "--explain", env=env).stdout
    assert '"base_image": "localhost:5000/library/python:3.11-slim"' in explained
    assert explained.splitlines()[-1] != default.strip()
    flag = run_cli("hash", str(EXAMPLE), "--base-image", "localhost:5000/library/python:3.11-slim")
    assert flag.stdout.strip() == explained.splitlines()[-1]
