"""py-rattler work in a child process: ``python -m mlflow_steps.build.rattler_child`` (JSON in/out).

py-rattler can abort the interpreter while it finalises, so every call runs here and the
child leaves with ``os._exit`` once its answer is flushed. Only the standard library and
rattler are imported.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

# The image's platform, described to the solver (it must not look at this machine); the
# CPU (``__archspec``) is the payload's ``cpu``.
VIRTUAL_PACKAGES = (("__unix", "0", "0"), ("__linux", "5.10", "0"), ("__glibc", "2.36", "0"))


async def solve(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Solve ``specs`` against ``channels`` (names resolved through ``alias``) for the conda
    ``subdir`` (linux-64, linux-aarch64) and its ``cpu`` (x86_64, aarch64)."""
    # only the child process needs rattler
    from rattler import (
        BuildString,
        Channel,
        ChannelConfig,
        Gateway,
        GenericVirtualPackage,
        PackageName,
        Version,
    )
    from rattler import solve as rattler_solve  # only the child process needs rattler

    config = ChannelConfig(channel_alias=payload["alias"])
    subdir = payload["subdir"]
    virtual = [GenericVirtualPackage(PackageName(name), Version(version), BuildString(build))
               for name, version, build in (*VIRTUAL_PACKAGES,
                                            ("__archspec", "1", payload["cpu"]))]
    records = await rattler_solve(
        [Channel(name, config) for name in payload["channels"]], payload["specs"],
        gateway=Gateway(cache_dir=payload["cache"]), platforms=[subdir, "noarch"],
        virtual_packages=virtual)
    return [_record(r) for r in records]


async def install(payload: dict[str, Any]) -> None:
    """Install package archives into ``staging`` as if it were ``prefix`` (paths, shebangs
    and placeholders name ``prefix``) for the conda ``subdir``; nothing is downloaded."""
    from rattler import Platform, RepoDataRecord  # only the child process needs rattler
    from rattler import install as rattler_install  # only the child process needs rattler

    records = [await RepoDataRecord.from_package_archive(path) for path in payload["archives"]]
    await rattler_install(records, payload["staging"], cache_dir=payload["cache"],
                          platform=Platform(payload["subdir"]), show_progress=False,
                          alternative_target_prefix=payload["prefix"],
                          execute_link_scripts=False)


async def read_lock(payload: dict[str, Any]) -> dict[str, Any]:
    """The packages a pixi (rattler) lock gives ``environment`` on ``platform``, and which
    of the conda ``specs`` none of them matches."""
    from rattler import LockFile, MatchSpec  # only the child process needs rattler

    lock = LockFile.from_path(payload["path"])
    answer: dict[str, Any] = {"environments": sorted(name for name, _ in lock.environments())}
    environment = lock.environment(payload["environment"])
    if environment is None:
        return answer
    platforms = {str(p.name): p for p in environment.platforms()}  # the lock's own objects
    answer["platforms"] = sorted(platforms)
    platform = platforms.get(payload["platform"])
    if platform is None:
        return answer
    records = environment.conda_repodata_records_for_platform(platform) or []
    answer["conda"] = [_record(r) for r in records]
    answer["pypi"] = [{"name": p.name, "version": str(p.version), "location": str(p.location),
                       "hashes": _hashes(p.hashes)}
                      for p in environment.pypi_packages_for_platform(platform) or []]
    answer["unmatched"] = [spec for spec in payload["specs"]
                           if not any(MatchSpec(spec).matches(r) for r in records)]
    return answer


def _record(record: Any) -> dict[str, Any]:
    return {"name": record.name.normalized, "version": str(record.version),
            "build": str(record.build), "url": record.url, "file_name": record.file_name,
            "sha256": record.sha256.hex() if record.sha256 else None,
            "md5": record.md5.hex() if record.md5 else None}


def _hashes(hashes: Any) -> dict[str, str]:
    if hashes is None:
        return {}
    return {name: value.hex() for name in ("sha256", "md5")
            if (value := getattr(hashes, name, None))}


COMMANDS = {"solve": solve, "install": install, "read_lock": read_lock}


def main() -> None:
    request = json.loads(sys.stdin.read())
    try:
        result = asyncio.run(COMMANDS[request["command"]](request))
        answer = {"result": result}
    except BaseException as exc:  # reported as one line (pyo3's panics are BaseExceptions)
        answer = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0]}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
