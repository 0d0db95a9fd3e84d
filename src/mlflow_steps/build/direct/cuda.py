"""CUDA from wheels: the CUDA version an environment's wheels carry, and the driver libraries
the NVIDIA container toolkit mounts from the host when a container starts (no image holds
them: they belong to the host's driver)."""

from __future__ import annotations

import re
from importlib.metadata import Distribution

from packaging.utils import canonicalize_name

# libnvidia-container (src/nvc_info.c): its "utility" and "compute" libraries, what
# NVIDIA_DRIVER_CAPABILITIES=compute,utility mounts; matched by name, any version suffix.
HOST_DRIVER_LIBRARIES = (
    "libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so",  # utility
    "libcuda.so", "libcudadebugger.so", "libnvidia-opencl.so", "libnvidia-gpucomp.so",
    "libnvidia-ptxjitcompiler.so", "libnvidia-fatbinaryloader.so", "libnvidia-allocator.so",
    "libnvidia-compiler.so", "libnvidia-pkcs11.so", "libnvidia-pkcs11-openssl3.so",
    "libnvidia-nvvm.so", "libnvidia-tileiras.so",  # compute
)
DRIVER_CAPABILITIES = "compute,utility"
CAPABILITIES_VARIABLE = "NVIDIA_DRIVER_CAPABILITIES"  # unset: the toolkit mounts `utility` only
CUDA_LABEL = "io.mlflow-steps.cuda"  # the CUDA version the environment's wheels carry
# The CUDA runtime's wheel: nvidia-cuda-runtime (CUDA 13 on) or nvidia-cuda-runtime-cuNN.
_RUNTIME = re.compile(r"nvidia-cuda-runtime(?:-cu\d+)?")


def cuda_version(dists: list[Distribution]) -> str | None:
    """major.minor of the CUDA runtime among ``dists`` (the wheels carry it), else None."""
    for dist in dists:
        if _RUNTIME.fullmatch(canonicalize_name(dist.metadata["Name"] or "")):
            major, _, rest = dist.version.partition(".")
            return f"{major}.{rest.split('.')[0] or '0'}"
    return None


def host_provided(library: str) -> bool:
    """Whether ``library`` (a DT_NEEDED name) is one the toolkit mounts from the host."""
    return any(library == name or library.startswith(name + ".")
               for name in HOST_DRIVER_LIBRARIES)


def runtime_environment(version: str) -> dict[str, str]:
    """What the NVIDIA container toolkit reads from an image whose wheels carry CUDA
    ``version``: every GPU the runtime is given, its compute and management libraries, and
    a driver new enough for that CUDA."""
    return {"NVIDIA_VISIBLE_DEVICES": "all", CAPABILITIES_VARIABLE: DRIVER_CAPABILITIES,
            "NVIDIA_REQUIRE_CUDA": f"cuda>={version}"}
