"""Lock mode (`--resolve`): resolve the declared requirements first and hash the pins.

The default hashes what the codeset declares (FuseML's behaviour): an unpinned dependency's
new upstream release reuses the old image. Resolving first (``uv pip compile`` for the
environment's Python on Linux, through the forwarded pip configuration) makes the tag a
function of the versions that would be installed, so a new release gives a new image; the
cost is a resolution (network) on every run, skip path included.
"""

from __future__ import annotations

import dataclasses
import subprocess

from mlflow_steps.build.image_plan import requirements_text
from mlflow_steps.core import interrupt
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact, secret_values
from mlflow_steps.core.retry import network_budget
from mlflow_steps.env.installer import uv_binary
from mlflow_steps.env.pip_secrets import uv_process_env, uv_process_secrets
from mlflow_steps.env.pipconfig import BuildPipConfig
from mlflow_steps.env.spec import EnvSpec

PLATFORM = "x86_64-unknown-linux-gnu"
RESOLVE_ATTEMPTS_BUDGET = 4  # a resolution may take several index round trips per package


def pinned_spec(spec: EnvSpec, pip: BuildPipConfig, environ: dict[str, str]) -> EnvSpec:
    """``spec`` with its requirements (the added ones included) replaced by exact pins."""
    if spec.strategy == "pip" and spec.locked_pip:
        raise StepError(f"applies to unlocked environments; {spec.source} is locked already",
                        source="input", field="resolve")
    if spec.strategy != "pip":
        raise StepError(f"applies to pip environments; a {spec.strategy} environment is "
                        + ("locked already" if spec.strategy == "conda-lock" else
                           "solved by conda (give a conda-lock.yml to pin it)"),
                        source="input", field="resolve")
    if spec.local_files or spec.pip.get("constraints"):
        raise StepError("cannot pin an environment with local files or constraints (they are "
                        "hashed by content already)", source="input", field="resolve")
    with interrupt.private_directory("mlflow-steps-resolve-") as tmp:
        requirements = tmp / "requirements.txt"
        requirements.write_text(requirements_text(spec))
        env = uv_process_env(pip, environ)
        # --refresh: the index's answer now, not a cached page (its point is seeing releases)
        argv = [str(uv_binary()), "pip", "compile", "--quiet", "--no-header", "--no-annotate",
                "--refresh",
                "--python-version", str(spec.python), "--python-platform", PLATFORM,
                str(requirements)]
        timeout = network_budget(environ) * RESOLVE_ATTEMPTS_BUDGET
        try:
            result = interrupt.run(argv, text=True, env=env, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise StepError(f"resolving the requirements took over {timeout:g} s",
                            source="input", field="resolve") from None
    if result.returncode != 0:
        problem = " ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
        secrets = [*secret_values(environ), *uv_process_secrets(pip)]
        raise StepError(f"the requirements do not resolve: {redact(problem, secrets)[-600:]}",
                        source="input", field="resolve")
    pins = [line.strip() for line in result.stdout.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "-"))]
    pip_part = {**spec.pip, "requirements": pins}
    return dataclasses.replace(spec, pip=pip_part, added_requirements=())

