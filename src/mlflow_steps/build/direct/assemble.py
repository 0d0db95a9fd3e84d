"""The staged environment as image layers and config, on top of the base's.

Layers, in order: one per large package group (the plan's ``own_layers``) the environment has,
one per other distribution of at least ``OWN_LAYER_BYTES`` installed, the other distributions
in ``BUCKETS`` layers by name, the venv itself, the step tooling,
the user set-up, the record (env files, lock, SBOM). Every entry's time is the 1980 floor
and every owner root (the user's home and the workdir: the runtime user), so a layer
depends on its files only: the numpy layer is one blob for every environment with that
numpy. Times in the config are the same 1980 epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from mlflow_steps.build.direct import NotApplicable
from mlflow_steps.build.direct.base_image import BaseFacts
from mlflow_steps.build.direct.bytecode import pyc_path
from mlflow_steps.build.direct.cuda import CUDA_LABEL, runtime_environment
from mlflow_steps.build.direct.install import StagedEnv
from mlflow_steps.build.direct.record import write_record
from mlflow_steps.build.fuseml import OWN_LAYER_MB
from mlflow_steps.build.image_plan import TOOLING_DIST, ImagePlan, RuntimeUser
from mlflow_steps.env.hashing import SOURCE_DATE_EPOCH
from mlflow_steps.image.layers import Entry, layer_mode
from mlflow_steps.image.push import rfc3339

# The other distributions spread over this many layers: a one-line change remakes one of
# them, not all (layers in all: at most len(own_layers) + BUCKETS + 4)
BUCKETS = 4
OWN_LAYER_BYTES = OWN_LAYER_MB << 20
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")  # what ENV values expand


@dataclass(frozen=True)
class LayerPlan:
    """One layer to write: a name for the history and its entries."""

    name: str
    entries: tuple[Entry, ...]


def _tree_entry(root: Path, path: Path) -> Entry:
    """The layer entry for a staged path: root-owned, modes normalised."""
    name = path.relative_to(root).as_posix()
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return Entry(name, "symlink", target=os.readlink(path), mode=layer_mode(mode))
    if stat.S_ISDIR(mode):
        return Entry(name, "dir", mode=layer_mode(mode))
    return Entry(name, "file", data=path, mode=layer_mode(mode))


def _with_parents(root: Path, paths: set[Path], overrides: dict[str, Entry]
                  ) -> tuple[Entry, ...]:
    """Entries for ``paths`` and every directory above them up to ``root`` (``overrides``:
    what the image has at a path instead of the staged file)."""
    everything = set(paths)
    for path in paths:
        parent = path.parent
        while parent != root and parent not in everything and root in parent.parents:
            everything.add(parent)
            parent = parent.parent
    entries = (_tree_entry(root, p) for p in sorted(everything))
    return tuple(overrides.get(entry.name, entry) for entry in entries)


def _owners(site: Path, prefix: Path) -> dict[Path, str]:
    """Installed file → its distribution (normalised name), from the conda packages'
    conda-meta (their files and record) and the RECORD files."""
    owners: dict[Path, str] = {}
    for meta in sorted(prefix.glob("conda-meta/*.json")):
        record = json.loads(meta.read_text())
        name = canonicalize_name(str(record["name"]))
        owners.update((prefix / relative, name) for relative in record.get("files") or ())
        owners[meta] = name
    for record in site.glob("*.dist-info/RECORD"):
        dist = canonicalize_name(record.parent.name.split("-")[0])
        for line in record.read_text().splitlines():
            relative = line.rsplit(",", 2)[0]
            if relative:
                owners[Path(os.path.normpath(site / relative))] = dist
        owners[record.parent] = dist
    return owners


def _owner(path: Path, owners: dict[Path, str]) -> str | None:
    if path in owners:
        return owners[path]
    if path.parent.name == "__pycache__" and path.suffix == ".pyc":
        source = path.parent.parent / (path.name.split(".", 1)[0] + ".py")
        return owners.get(source)
    for parent in path.parents:
        if parent in owners:  # inside a dist-info directory
            return owners[parent]
    return None


def environment_groups(staged: StagedEnv, own_layer_bytes: int = OWN_LAYER_BYTES
                       ) -> list[tuple[str, set[Path]]]:
    """The environment's files (no bytecode yet) split by distribution into the layer
    groups: (name, paths), in layer order: the plan's package groups, then each other
    distribution of at least ``own_layer_bytes`` installed, each in a layer of its own (by
    name; its bytes depend on its files and the prefix only: one blob in every image that
    has it), then the rest in ``BUCKETS`` layers, the venv, the tooling."""
    plan = staged.plan
    own_layers = plan.install.own_layers
    owners = _owners(staged.site_packages, staged.prefix)
    groups: dict[str, set[Path]] = defaultdict(set)
    by_dist: dict[str, set[Path]] = defaultdict(set)
    for directory, subdirectories, files in os.walk(staged.prefix):
        # symbolic links to directories are entries too (os.walk does not follow them)
        links = [d for d in subdirectories if os.path.islink(os.path.join(directory, d))]
        paths = [Path(directory, name) for name in [*files, *links]]
        for path in paths:
            dist = _owner(path, owners)
            if dist == TOOLING_DIST:
                groups["tooling"].add(path)
            elif dist and (group := plan.install.own_layer_of(dist)) is not None:
                groups[" ".join(own_layers[group])].add(path)
            elif dist:
                by_dist[dist].add(path)
            else:  # the venv itself (pyvenv.cfg, bin/python, activate scripts), conda's
                # history
                groups["environment"].add(path)
    heavy = sorted(dist for dist, paths in by_dist.items()
                   if sum(os.lstat(path).st_size for path in paths) >= own_layer_bytes)
    for dist, paths in by_dist.items():
        groups[_own_name(dist) if dist in heavy else _bucket(dist)] |= paths
    link = staged.root / plan.tooling_prefix.lstrip("/") / "bin" / "mlflow-steps"
    link.parent.mkdir(parents=True)
    link.symlink_to(f"{plan.env_prefix}/bin/mlflow-steps")
    groups["tooling"].add(link)
    ordered = [" ".join(group) for group in own_layers] + [_own_name(d) for d in heavy] + [
        _bucket_name(index) for index in range(BUCKETS)] + ["environment", "tooling"]
    return [(name, groups[name]) for name in ordered if groups.get(name)]


def _own_name(dist: str) -> str:
    return f"{dist} (own layer)"


def _bucket_name(index: int) -> str:
    return f"packages {index + 1}/{BUCKETS}"


def _bucket(dist: str) -> str:
    """The layer of a distribution without one of its own: by its name's digest, so it
    stays in the same layer whatever else the environment has."""
    return _bucket_name(int(hashlib.sha256(dist.encode()).hexdigest(), 16) % BUCKETS)


def with_bytecode(staged: StagedEnv, plan: LayerPlan, sources: frozenset[Path]) -> LayerPlan:
    """``plan`` and the pycs compiled for its ``sources`` (with their __pycache__ dirs)."""
    pycs = {pyc for source in sources if not source.is_symlink()
            for pyc in [pyc_path(staged, source)] if pyc.is_file()}
    known = {entry.name for entry in plan.entries}
    added = tuple(entry for entry in _with_parents(staged.root, pycs, staged.overrides)
                  if entry.name not in known)
    return LayerPlan(plan.name, plan.entries + added)


def tree_plan(staged: StagedEnv, name: str, paths: set[Path]) -> LayerPlan:
    """A layer of ``paths`` of the staging tree (their directories included)."""
    return LayerPlan(name, _with_parents(staged.root, paths, staged.overrides))


def record_layer(staged: StagedEnv) -> LayerPlan:
    """The record (env files, lock, SBOM), written now."""
    return tree_plan(staged, "record", set(write_record(staged).rglob("*")))


def _lines(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line.strip()]


def user_layer(base: BaseFacts, user: RuntimeUser) -> LayerPlan:
    """The runtime user (as `useradd --create-home` adds it, unless the base has its uid)
    and the workdir it owns."""
    uid, name = user.uid, user.name
    workdir = Path(user.workdir.lstrip("/"))
    entries = [*(Entry(parent.as_posix(), "dir") for parent in reversed(workdir.parents)
                 if parent != Path(".")),
               Entry(workdir.as_posix(), "dir", uid=uid, gid=uid)]
    passwd = base.accounts.get("etc/passwd", {}).get("text")
    if passwd is None:
        raise NotApplicable("the base has no /etc/passwd to add the runtime user to")
    if not any(len(f) > 2 and f[2] == str(uid) for f in _lines(passwd)):
        group = base.accounts.get("etc/group", {}).get("text", "")
        if any(len(f) > 2 and f[2] == str(uid) for f in _lines(group)):
            raise NotApplicable(f"the base's group {uid} is taken; useradd would pick another")
        if any(f[0] == name for f in _lines(passwd) + _lines(group)):
            raise NotApplicable(f"the base has a user or group {name} (not uid {uid})")
        home = f"home/{name}"
        added = {
            "etc/passwd": f"{name}:x:{uid}:{uid}::/{home}:/bin/sh\n",
            "etc/group": f"{name}:x:{uid}:\n",
            "etc/shadow": f"{name}:!:{SOURCE_DATE_EPOCH // 86400}:0:99999:7:::\n",
            "etc/gshadow": f"{name}:!::\n",
        }
        for account, line in added.items():
            if account in base.accounts:
                known = base.accounts[account]
                text = known["text"] if known["text"].endswith("\n") or not known["text"] \
                    else known["text"] + "\n"
                entries.append(Entry(account, "file", data=(text + line).encode(),
                                     mode=known["mode"], uid=known["uid"], gid=known["gid"]))
        entries += [Entry("etc", "dir"), Entry("home", "dir"),
                    Entry(home, "dir", mode=0o755, uid=uid, gid=uid)]
        for skeleton, text in base.skeleton.items():
            entries.append(Entry(f"{home}/{skeleton.removeprefix('etc/skel/')}", "file",
                                 data=text.encode(), mode=0o644, uid=uid, gid=uid))
    return LayerPlan("user", tuple(entries))


def _expanded(value: str, values: dict[str, str]) -> str:
    """``value`` with ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` expanded from
    ``values`` as Docker's ENV does (``:-``: the default when NAME is unset or empty)."""
    def one(match: re.Match[str]) -> str:
        found = values.get(match[1] or match[3], "")
        return match[2] if not found and match[2] is not None else found

    return _VARIABLE.sub(one, value)


def _env_list(base_env: list[str], plan: ImagePlan) -> list[str]:
    """The base's Env (none at all: no variable) with ours applied as Docker applies ENV."""
    values = dict(entry.split("=", 1) for entry in base_env if "=" in entry)
    values.update(plan.build_env)
    for key, value in plan.runtime_env.items():
        values[key] = _expanded(value, values)
    return [f"{key}={value}" for key, value in values.items()]


def image_config(base: BaseFacts, plan: ImagePlan, layers: list[tuple[str, str]],
                 labels: dict[str, str], cuda: str | None = None) -> dict:
    """The image config: the base's with the plan's env, labels, user, workdir, command,
    and a history entry and diff_id per layer (``layers``: name, diff_id); with ``cuda``
    (the version the wheels carry) what the NVIDIA container toolkit reads, and a label."""
    config = dict(base.config)
    settings = dict(config.get("config") or {})
    settings["Env"] = _env_list(list(settings.get("Env") or []), plan)
    settings["Labels"] = {**(settings.get("Labels") or {}), **plan.labels, **labels}
    if cuda:
        nvidia = runtime_environment(cuda)  # set as an ENV would, over the base's
        settings["Env"] = [e for e in settings["Env"] if e.split("=", 1)[0] not in nvidia]
        settings["Env"] += [f"{key}={value}" for key, value in nvidia.items()]
        settings["Labels"][CUDA_LABEL] = cuda
    settings.update(User=str(plan.user.uid), WorkingDir=plan.user.workdir,
                    Cmd=list(plan.command))
    stamp = rfc3339(SOURCE_DATE_EPOCH)
    history = list(config.get("history") or [])
    history += [{"created": stamp, "created_by": f"mlflow-steps direct: {name}"}
                for name, _ in layers]
    for volatile in ("container", "container_config", "docker_version"):
        config.pop(volatile, None)
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    return {**config, "config": settings, "created": stamp, "history": history,
            "rootfs": {"type": "layers", "diff_ids": diff_ids + [d for _, d in layers]}}
