"""Heavy distributions in layers of their own, one blob in every image that has them: a
second project with the same heavy wheel pushes none of its bytes again. A wheel just over a
lowered threshold stands for torch and the nvidia-* ones."""

from __future__ import annotations

import random
import re
from pathlib import Path

from support.helpers import MINIMAL_MLPROJECT, make_wheel, pushed_image, write_codeset
from support.synthetic_base import build

from mlflow_steps.image.client import RegistryClient

HEAVY_BYTES = 1_200_000  # over --own-layer-mb 1 installed, incompressible
DIRECT = "mlflow-steps direct: "


def project(tmp_path: Path, name: str, wheels: list[Path], also: str) -> Path:
    return write_codeset(tmp_path / name, {
        "MLproject": MINIMAL_MLPROJECT,
        **{f"wheels/{wheel.name}": wheel.read_bytes() for wheel in wheels},
        "requirements.txt": "".join(f"./wheels/{w.name}\n" for w in wheels) + also})


def our_layers(client: RegistryClient, reference: str) -> dict[str, str]:
    """The image's own layers: history name → blob digest."""
    _, _, manifest, config = pushed_image(client, reference)
    names = [entry["created_by"].removeprefix(DIRECT) for entry in config["history"]
             if entry.get("created_by", "").startswith(DIRECT)]
    ours = manifest["layers"][-len(names):]  # after the base's
    return {name: layer["digest"] for name, layer in zip(names, ours, strict=True)}


def test_a_heavy_distribution_is_one_shared_layer(registry, synthetic_base, no_engine,
                                                  warm_cache, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    heavy = make_wheel(wheels, "mls_heavy", "1.0", {
        "mls_heavy/__init__.py": b"", "mls_heavy/weights.bin":
        random.Random(7).randbytes(HEAVY_BYTES)}, "py3-none-any")
    small = make_wheel(wheels, "mls_small", "1.0", {"mls_small.py": b"VALUE = 1\n"})
    env = {**no_engine, "MLFLOW_STEPS_CACHE": warm_cache(tmp_path / "cache")}
    first = build(project(tmp_path, "first", [heavy], "six==1.16.0\n"), registry,
                  synthetic_base, "shared/first", "--own-layer-mb", "1", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    # a log gets a progress line as each phase ends (and every 10 s while it runs)
    assert re.search(r"^\[progress\] staging: done in \d+s$", first.stderr, re.M)
    assert re.search(r"^\[progress\] compressing: \d+\.\d MB in \d+s, ", first.stderr, re.M)
    assert re.search(r"^\[progress\] pushing: \d+\.\d MB in \d+s, ", first.stderr, re.M)
    second = build(project(tmp_path, "second", [heavy, small], ""), registry, synthetic_base,
                   "shared/second", "--own-layer-mb", "1", "-q", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[progress]" not in second.stderr

    client = RegistryClient(registry.address)
    layers = [our_layers(client, result.stdout.strip()) for result in (first, second)]
    own = "mls-heavy (own layer)"
    # every distribution over the threshold in both (the tooling's too): the same blob
    shared = {name for name in layers[0] if name.endswith("(own layer)")} & set(layers[1])
    assert own in shared and len(shared) > 1
    assert all(layers[0][name] == layers[1][name] for name in shared)
    assert "mls-small (own layer)" not in layers[1]  # a small one: in a packages bucket
    # the second image's heavy layer: known from the first build, mounted, not remade
    assert f"[push] {layers[1][own][:19]}: mounted" in second.stderr
    heavy_blob = client.blob("shared/second", layers[1][own], 4 << 20)
    assert len(heavy_blob) > HEAVY_BYTES  # the weights are in it, not in a shared bucket

    # the default threshold (32 MB): the same wheel goes into a packages bucket; built with
    # a terminal on stderr: a live display instead of lines
    reference, shown = build_on_a_terminal(project(tmp_path, "default", [heavy], "six==1.16.0\n"),
                                           registry, synthetic_base, "shared/default", env)
    assert not any(name.endswith("(own layer)") for name in our_layers(client, reference))
    assert "\x1b[" in shown and "compressing" in shown and "[progress]" not in shown


def build_on_a_terminal(codeset: Path, registry, base: str, repository: str,
                        env: dict[str, str]) -> tuple[str, str]:
    """`build` with its stderr a terminal (a pty): the reference, and what the terminal got."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow_steps", "build", str(codeset), "--builder", "direct",
         "--registry", registry.address, "--base-image", base, "--repository", repository],
        stdout=subprocess.PIPE, stderr=follower, env=env, text=True)
    os.close(follower)
    shown, deadline = b"", time.monotonic() + 600
    while time.monotonic() < deadline:
        if not select.select([leader], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    stdout, _ = process.communicate(timeout=600)
    assert process.returncode == 0, shown.decode(errors="replace")[-3000:]
    return stdout.strip(), shown.decode(errors="replace")
