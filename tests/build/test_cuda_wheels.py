"""CUDA from wheels through the engine-free builder: the driver's libraries come from the host
(the NVIDIA container toolkit mounts them), so they are not missing; anything else missing
still refuses before a push. Small synthetic wheels stand for torch and the nvidia-* ones."""

from __future__ import annotations

from pathlib import Path

from support.helpers import MINIMAL_MLPROJECT, make_wheel, pushed_image, run_cli, write_codeset
from support.hostile_registry import HostileRegistry
from support.synthetic_base import build, elf_needing

from mlflow_steps.build.direct.cuda import cuda_version, host_provided
from mlflow_steps.image.client import RegistryClient

PLATFORM = "py3-none-manylinux_2_17_x86_64"


def cuda_codeset(tmp_path: Path, runtime: str | None = "13.0.96",
                 also_needs: str | None = None) -> Path:
    """A codeset of local wheels: a torch-like one whose libraries need the driver's
    libcuda.so.1 and libnvidia-ml.so.1 (``also_needs``: one more library, needed by a
    versioned library an extension links to), and (``runtime``) the CUDA runtime's wheel at
    that version, with a plugin as NVSHMEM's transports are (loaded with dlopen, on demand:
    nothing links to it) needing a library no image has."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    files = {"mls_gpu_probe/__init__.py": b"",
             "mls_gpu_probe/_C.so": elf_needing("libcuda.so.1"),
             "mls_gpu_probe/_nvml.so": elf_needing("libnvidia-ml.so.1")}
    if also_needs:
        files["mls_gpu_probe/_other.so"] = elf_needing("libmls_helper.so.2")
        files["mls_gpu_probe/lib/libmls_helper.so.2"] = elf_needing(also_needs)
    made = [make_wheel(wheels, "mls_gpu_probe", "1.0", files, PLATFORM)]
    if runtime:
        made.append(make_wheel(wheels, "nvidia_cuda_runtime", runtime, {
            "nvidia/cu13/lib/libcudart.so.13": elf_needing("libc.so.6"),
            "nvidia/cu13/lib/mls_transport_fabric.so.3": elf_needing("libfabric.so.1")},
            PLATFORM))
    return write_codeset(tmp_path / "codeset", {
        "MLproject": MINIMAL_MLPROJECT,
        **{f"wheels/{wheel.name}": wheel.read_bytes() for wheel in made},
        "requirements.txt": "".join(f"./wheels/{wheel.name}\n" for wheel in made)
        + "six==1.16.0\n"})


def test_driver_libraries_are_the_toolkit_s_by_name() -> None:
    assert host_provided("libcuda.so.1") and host_provided("libcuda.so")
    assert host_provided("libnvidia-ml.so.1") and host_provided("libnvidia-nvvm.so.4")
    assert host_provided("libnvidia-ptxjitcompiler.so.1")
    # CUDA's own libraries come in wheels, never from the driver
    assert not host_provided("libcudart.so.13") and not host_provided("libcublas.so.13")
    assert not host_provided("libcudaxyz.so.1") and not host_provided("libGL.so.1")


def test_cuda_version_is_the_runtime_wheel_s(tmp_path: Path) -> None:
    from importlib.metadata import PathDistribution

    def dist(name: str, version: str) -> PathDistribution:
        info = tmp_path / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n")
        return PathDistribution(info)

    assert cuda_version([dist("six", "1.16.0")]) is None
    assert cuda_version([dist("nvidia-cudnn-cu13", "9.24.0.43")]) is None
    assert cuda_version([dist("nvidia_cuda_runtime", "13.0.96")]) == "13.0"
    assert cuda_version([dist("nvidia-cuda-runtime-cu12", "12.4.127")]) == "12.4"


def test_cuda_wheels_build_directly_with_what_the_toolkit_reads(
        registry, synthetic_base, no_engine, warm_cache, tmp_path: Path) -> None:
    """`--builder direct`, no engine: the driver's libraries are the host's, the image says
    what the NVIDIA container toolkit reads, and `inspect` shows the CUDA version."""
    project = cuda_codeset(tmp_path)
    result = build(project, registry, synthetic_base, "cuda/probe",
                   env={**no_engine, "MLFLOW_STEPS_CACHE": warm_cache(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "does not apply" not in result.stderr
    assert "plugins loaded only on demand lack, in the image: libfabric.so.1 (for lib/" \
           "python3.11/site-packages/nvidia/cu13/lib/mls_transport_fabric.so.3)" in result.stderr
    reference = result.stdout.strip()
    *_, config = pushed_image(RegistryClient(registry.address), reference)
    env = config["config"]["Env"]
    assert {"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
            "NVIDIA_REQUIRE_CUDA=cuda>=13.0"} <= set(env)
    assert config["config"]["Labels"]["io.mlflow-steps.cuda"] == "13.0"

    shown = run_cli("inspect", reference, env=no_engine)
    assert shown.returncode == 0, shown.stderr
    [line] = [x for x in shown.stdout.splitlines() if x.startswith("cuda ")]
    assert line.split()[1] == "13.0" and "NVIDIA driver comes from the host" in line


def test_a_plain_image_says_nothing_of_cuda(registry, synthetic_base, no_engine, warm_cache,
                                            codeset, tmp_path: Path) -> None:
    project = codeset({"requirements.txt": "six==1.16.0\n"})
    result = build(project, registry, synthetic_base, "cuda/plain",
                   env={**no_engine, "MLFLOW_STEPS_CACHE": warm_cache(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    *_, config = pushed_image(RegistryClient(registry.address), result.stdout.strip())
    assert not any(e.startswith("NVIDIA_") for e in config["config"]["Env"])
    assert "io.mlflow-steps.cuda" not in config["config"]["Labels"]


def _refused(tmp_path: Path, registry, synthetic_base, no_engine, project: Path) -> str:
    """Build ``project`` with `--builder direct` through a registry that records every
    request: refused with exit 2 and nothing written; its last line."""
    output = tmp_path / "output"
    with HostileRegistry(upstream=f"http://{registry.address}") as hostile:
        result = build(project, hostile, synthetic_base, "cuda/refused", "--output-file",
                       str(output), env={**no_engine,
                                         "MLFLOW_STEPS_CACHE": str(tmp_path / "cache")})
        writes = [f"{r.method} {r.path}" for r in hostile.seen
                  if r.method in ("POST", "PUT", "PATCH")]
    assert result.returncode == 2 and result.stdout == "", result.stderr[-3000:]
    assert writes == [] and not output.exists()
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_without_the_cuda_runtime_the_driver_is_missing(registry, synthetic_base, no_engine,
                                                        tmp_path: Path) -> None:
    """No CUDA wheels: nothing says the container gets a GPU driver, so libcuda is missing."""
    line = _refused(tmp_path, registry, synthetic_base, no_engine,
                    cuda_codeset(tmp_path, runtime=None))
    assert "shared libraries neither the environment nor the base provides: libcuda.so.1 " \
           "(needed by lib/python3.11/site-packages/mls_gpu_probe/_C.so)" in line


def test_with_cuda_wheels_another_missing_library_still_refuses(
        registry, synthetic_base, no_engine, tmp_path: Path) -> None:
    line = _refused(tmp_path, registry, synthetic_base, no_engine,
                    cuda_codeset(tmp_path, also_needs="libGL.so.1"))
    # a versioned library is checked when an extension links to it, not taken for a plugin
    assert "provides: libGL.so.1 (needed by lib/python3.11/site-packages/mls_gpu_probe/" \
           "lib/libmls_helper.so.2)" in line
    assert "libcuda" not in line and "libnvidia-ml" not in line and "libfabric" not in line
