"""`make demo` (scripts/demo.py) prints the example's environment tag first: it must be the
tag the workflow's builder step computes from its inputs, the tag the workflow then builds
or skips (it once hashed without them: another base, another tag).

No engine: the builder's decision is `build --stage prepare` (the step's skip-or-build
decision, before anything builds) with the builder step's variables, against a registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import demo
from support.helpers import EXAMPLE, run_cli

from mlflow_steps.image.reference import ImageRef


def test_the_tag_printed_first_is_the_one_the_builder_step_computes(registry,
                                                                     tmp_path: Path) -> None:
    inputs = demo.workflow_inputs(registry)
    step_env = demo.builder_step_env(inputs)
    with (tmp_path / "demo.log").open("w") as log:
        printed = demo.environment_tag(demo.tag_variables(step_env), log)

    decision = run_cli("build", "--stage", "prepare", "--json", "--executor", "kaniko",
                       "--plan-dir", str(tmp_path / "plan"), str(EXAMPLE),
                       env={**os.environ, **step_env})
    assert decision.returncode == 0, decision.stderr
    builder = json.loads(decision.stdout)
    assert (builder["decision"], builder["base"]) == ("build", inputs["base-image"])
    assert ImageRef.parse(builder["reference"]).tag == printed
    assert printed != run_cli("hash", str(EXAMPLE)).stdout.strip()  # the defaults' tag
