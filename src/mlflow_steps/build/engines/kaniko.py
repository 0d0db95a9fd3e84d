"""Kaniko executor arguments: the `build` step of the builder plan runs the published image.

Our Python never runs inside the executor's container: Kaniko unpacks the base image over
its own root filesystem, so anything else living there would be corrupted or snapshotted.
"""

from __future__ import annotations

from pathlib import Path

from mlflow_steps.build.engines.engine import PUSH_ATTEMPTS, BuildRequest


def kaniko_args(request: BuildRequest, digest_file: Path, ca_file: Path | None) -> list[str]:
    """The executor's arguments for ``request`` (paths as the executor container sees them)."""
    argv = [
        f"--context=dir://{request.context}",
        f"--dockerfile={request.context / 'Dockerfile'}",
        f"--destination={request.destination}",
        f"--digest-file={digest_file}",
        f"--compressed-caching={'true' if request.compressed_caching else 'false'}",
        f"--push-retry={PUSH_ATTEMPTS - 1}",
    ]
    argv += [f"--secret=id={secret_id},src={path}"
             for secret_id, path in sorted(request.secrets.items())]
    argv += [f"--label={key}={value}" for key, value in sorted(request.labels.items())]
    if request.cache or request.cache_repo:
        argv.append("--cache=true")
    if request.cache_repo:
        argv.append(f"--cache-repo={request.cache_repo}")
    if request.reproducible:
        argv.append("--reproducible")
    insecure = (ref.registry for ref in (request.destination, request.base_image)
                if request.insecure(ref))
    argv += [f"--insecure-registry={host}" for host in dict.fromkeys(insecure)]
    if ca_file:
        argv.append(f"--registry-certificate={request.destination.registry}={ca_file}")
    argv.append(f"--verbosity={'debug' if request.verbose else 'info'}")
    return argv
