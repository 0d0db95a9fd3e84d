"""Load a FuseML workflow file: shape, names and every expression checked, with marks."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mlflow_steps.build.direct.cuda import CAPABILITIES_VARIABLE, DRIVER_CAPABILITIES
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.yaml_file import compose_documents, read_yaml_documents
from mlflow_steps.workflow.expressions import (
    CODESET_ATTRIBUTES,
    ExpressionError,
    ExtensionRef,
    InputRef,
    Ref,
    StepOutputRef,
    Template,
    parse_template,
)
from mlflow_steps.workflow.model import (
    CODESET_TASK,
    DEFAULT_CODESET_PATH,
    GPU_RESOURCE,
    INPUT_TYPES,
    SELECTOR_FIELDS,
    CodesetMount,
    EnvVar,
    Param,
    Selector,
    Step,
    Workflow,
    WorkflowInput,
    WorkflowOutput,
    k8s_name,
)
from mlflow_steps.workflow.nodes import Node, Where
from mlflow_steps.workflow.versions import is_valid_constraint

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PARAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def load_workflow(path: Path) -> Workflow:
    """Read (bounded, regular files only), parse and validate the workflow file at ``path``."""
    return _workflow(read_yaml_documents(path, what="workflow files"), str(path))


def parse_workflow(text: str, file: str) -> Workflow:
    """Parse and validate workflow YAML ``text`` (``file`` names it in errors)."""
    return _workflow(compose_documents(text, file), file)


def yaml_nodes(documents: list[yaml.Node], file: str) -> list[Node]:
    """Composed YAML documents as Nodes that know their file and line."""
    return [Node(doc, Where(file, doc.start_mark.line + 1, "")) for doc in documents]


def _workflow(composed: list[yaml.Node], file: str) -> Workflow:
    documents = yaml_nodes(composed, file)
    if len(documents) != 1:
        raise Where(file, 1, "").error(
            f"expected one YAML document with a workflow, found {len(documents)}")
    root = documents[0].mapping(("name", "description", "inputs", "outputs", "steps"),
                                required=("name", "steps"))
    scope = _Scope(inputs={item.name: item for item in _inputs(root.get("inputs"))})
    step_nodes = list(root["steps"].items())
    if not step_nodes:
        raise root["steps"].where.error("a workflow needs at least one step")
    names = _unique(((node, node.mapping(_STEP_KEYS).get("name")) for node in step_nodes),
                    "step")
    _check_task_names(step_nodes, names)
    steps: list[Step] = []
    for node, name in zip(step_nodes, names, strict=True):
        scope.later = names[len(steps) + 1:]
        steps.append(_step(node, name, scope))
        scope.outputs[name] = steps[-1].outputs
    return Workflow(
        name=root["name"].name(),
        description=_optional(root, "description"),
        inputs=tuple(scope.inputs.values()),
        outputs=_outputs(root.get("outputs"), steps),
        steps=tuple(steps),
        source=file,
    )


_STEP_KEYS = ("name", "image", "inputs", "outputs", "env", "extensions", "resources")
MAX_GPUS = 64


@dataclass
class _Scope:
    """What expressions in the step being read may refer to."""

    inputs: dict[str, WorkflowInput]
    outputs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    later: list[str] = field(default_factory=list)


def _optional(values: dict[str, Node], key: str, default: str = "") -> str:
    return values[key].optional_text(default) if key in values else default


def _check_task_names(step_nodes: list[Node], names: list[str]) -> None:
    """Distinct step names must stay distinct as Kubernetes (Tekton task) names."""
    tasks = {CODESET_TASK: "the codeset task"}
    for node, name in zip(step_nodes, names, strict=True):
        where = node.mapping(_STEP_KEYS)["name"].where
        try:
            task = k8s_name(name)
        except StepError:
            raise where.error(f"step name {name!r} has no letter or digit for a Kubernetes "
                              "name") from None
        if task in tasks:
            raise where.error(f"step {name!r} and {tasks[task]} both become the Tekton task "
                              f"{task!r}: rename one")
        tasks[task] = f"step {name!r}"


def _unique(named: Iterable[tuple[Node, Node | None]], what: str) -> list[str]:
    """The names of ``named`` items; a missing or repeated name is an error."""
    seen: list[str] = []
    for item, name_node in named:
        if name_node is None:
            raise item.where.error(f"{what} has no 'name'")
        name = name_node.name()
        if name in seen:
            raise name_node.where.error(f"duplicate {what} name {name!r}")
        seen.append(name)
    return seen


def _inputs(node: Node | None) -> list[WorkflowInput]:
    if node is None:
        return []
    items = [(item, item.mapping(("name", "description", "type", "default", "labels")))
             for item in node.items()]
    names = _unique(((item, values.get("name")) for item, values in items), "input")
    result = []
    for (_, values), name in zip(items, names, strict=True):
        kind = _optional(values, "type", "string")
        if kind not in INPUT_TYPES:
            raise values["type"].where.error(
                f"unknown input type {kind!r} (allowed: {', '.join(INPUT_TYPES)})")
        default = values["default"].optional_text() if "default" in values else None
        result.append(WorkflowInput(name, kind, _optional(values, "description"), default))
    return result


def _outputs(node: Node | None, steps: list[Step]) -> tuple[WorkflowOutput, ...]:
    if node is None:
        return ()
    items = [(item, item.mapping(("name", "description", "type"))) for item in node.items()]
    names = _unique(((item, values.get("name")) for item, values in items), "output")
    produced = {output for step in steps for output in step.outputs}
    for (_, values), name in zip(items, names, strict=True):
        if name not in produced:
            raise values["name"].where.error(
                f"workflow output {name!r} is not an output of any step")
    return tuple(WorkflowOutput(name, _optional(values, "description"))
                 for (_, values), name in zip(items, names, strict=True))


def _step(node: Node, name: str, scope: _Scope) -> Step:
    values = node.mapping(_STEP_KEYS, required=("name", "image"))
    selectors = _selectors(values.get("extensions"))
    declared = tuple(selector.name for selector in selectors)
    image = _template(values["image"], scope, name, declared)
    if image.literal == "":
        raise values["image"].where.error("must not be empty")
    params, codeset = _step_inputs(values.get("inputs"), scope, name, declared)
    outputs = _step_outputs(values.get("outputs"))
    env = _env(values.get("env"), scope, name, declared)
    gpus = _gpus(values.get("resources"))
    if gpus and CAPABILITIES_VARIABLE not in {variable.name for variable in env}:
        # unset, the NVIDIA toolkit mounts only its `utility` set (no libcuda) under
        # Kubernetes' device plugin and Docker's --gpus alike; an image the direct builder
        # made says so itself, an engine-built one cannot
        env += (EnvVar(CAPABILITIES_VARIABLE, Template((DRIVER_CAPABILITIES,)), node.where),)
    return Step(name, image, params, codeset, outputs, env, selectors, node.where, gpus)


def _gpus(node: Node | None) -> int:
    """``resources: {limits: {nvidia.com/gpu: N}}``: N (0 when not asked for)."""
    if node is None or node.is_null():
        return 0
    limits = node.mapping(("limits",)).get("limits")
    if limits is None or limits.is_null():
        return 0
    value = limits.mapping((GPU_RESOURCE,)).get(GPU_RESOURCE)
    if value is None:
        return 0
    text = value.text().strip()
    if not re.fullmatch(r"[0-9]{1,3}", text) or not 1 <= int(text) <= MAX_GPUS:
        raise value.where.error(f"expected a whole number of GPUs from 1 to {MAX_GPUS}, "
                                f"got {text!r}")
    return int(text)


def _step_inputs(node: Node | None, scope: _Scope, step: str, declared: tuple[str, ...]
                 ) -> tuple[tuple[Param, ...], CodesetMount | None]:
    params: list[Param] = []
    codeset: CodesetMount | None = None
    seen: set[str] = set()
    for item in node.items() if node is not None else ():
        values = item.mapping(("name", "value", "codeset"))
        name = values["name"].name() if "name" in values else ""
        if name in seen:
            raise values["name"].where.error(f"duplicate step input name {name!r}")
        seen.add(name)
        if ("codeset" in values) == ("value" in values):
            raise item.where.error("a step input has either a 'value' or a 'codeset'")
        if "codeset" in values:
            if codeset is not None:
                raise item.where.error("a step takes at most one codeset input")
            codeset = _codeset(values["codeset"], scope, name)
            continue
        if not name:
            raise item.where.error("step input has no 'name'")
        if not PARAM_NAME.fullmatch(name):
            raise values["name"].where.error(
                f"{name!r} is not a valid input name (letters, digits, '_' and '-')")
        template = _template(values["value"], scope, step, declared, allow_null=True)
        params.append(Param(name, template, values["value"].where))
    return tuple(params), codeset


def _codeset(node: Node, scope: _Scope, name: str) -> CodesetMount:
    values = node.mapping(("name", "path"), required=("name",))
    try:
        refs = parse_template(values["name"].text()).parts
    except ExpressionError as exc:
        raise values["name"].where.error(str(exc)) from None
    ref = refs[0] if len(refs) == 1 else None
    if not isinstance(ref, InputRef) or ref.attribute:
        raise values["name"].where.error("a codeset name must be '{{ inputs.CODESET }}'")
    _check_input(ref, scope, values["name"].where)
    if scope.inputs[ref.input].type != "codeset":
        raise values["name"].where.error(f"input {ref.input!r} is not of type codeset")
    path = _optional(values, "path", DEFAULT_CODESET_PATH)
    if not path.startswith("/"):
        raise values["path"].where.error(f"codeset path {path!r} must be absolute")
    return CodesetMount(ref.input, path, name)


def _step_outputs(node: Node | None) -> tuple[str, ...]:
    if node is None:
        return ()
    items = []
    for item in node.items():
        values = item.mapping(("name", "description", "image"))
        if "image" in values:
            raise values["image"].where.error(
                "image outputs (FuseML's Kaniko build) are not supported: use the mlflow "
                "builder step and reference its output as the next step's image")
        items.append((item, values.get("name")))
    return tuple(_unique(items, "step output"))


def _env(node: Node | None, scope: _Scope, step: str, declared: tuple[str, ...]
         ) -> tuple[EnvVar, ...]:
    if node is None:
        return ()
    items = [(item, item.mapping(("name", "value"), required=("name",))) for item in node.items()]
    names = _unique(((item, values["name"]) for item, values in items), "env")
    result = []
    for (item, values), name in zip(items, names, strict=True):
        if not ENV_NAME.fullmatch(name):
            raise values["name"].where.error(f"{name!r} is not a valid environment variable name")
        value = values.get("value")
        template = (_template(value, scope, step, declared, allow_null=True) if value is not None
                    else Template(()))
        result.append(EnvVar(name, template, value.where if value else item.where))
    return tuple(result)


def _selectors(node: Node | None) -> tuple[Selector, ...]:
    if node is None:
        return ()
    items = [(item, item.mapping(("name", *SELECTOR_FIELDS))) for item in node.items()]
    names = _unique(((item, values.get("name")) for item, values in items), "extension")
    result = []
    for (item, values), name in zip(items, names, strict=True):
        fields = tuple((key, values[key].text()) for key in SELECTOR_FIELDS
                       if key in values and not values[key].is_null())
        version = dict(fields).get("version")
        if version and not is_valid_constraint(version):
            raise values["version"].where.error(
                f"{version!r} is neither a version nor a semver range (e.g. ~1.10.0, >=2)")
        result.append(Selector(name, fields, item.where))
    return tuple(result)


def _template(node: Node, scope: _Scope, step: str, declared: tuple[str, ...],
              allow_null: bool = False) -> Template:
    text = node.optional_text() if allow_null else node.text()
    try:
        template = parse_template(text)
    except ExpressionError as exc:
        raise node.where.error(str(exc)) from None
    for ref in template.refs:
        _check_ref(ref, scope, step, declared, node.where)
    return template


def _check_ref(ref: Ref, scope: _Scope, step: str, declared: tuple[str, ...],
               where: Where) -> None:
    if isinstance(ref, InputRef):
        _check_input(ref, scope, where)
    elif isinstance(ref, StepOutputRef):
        _check_step_output(ref, scope, step, where)
    elif isinstance(ref, ExtensionRef) and ref.selector not in declared:
        listed = ", ".join(declared) or "none"
        raise where.error(f"unknown extension {ref.selector!r}: the step's extensions "
                          f"are: {listed}")


def _check_input(ref: InputRef, scope: _Scope, where: Where) -> None:
    if ref.input not in scope.inputs:
        listed = ", ".join(scope.inputs) or "none"
        raise where.error(f"unknown input {ref.input!r} (workflow inputs: {listed})")
    kind = scope.inputs[ref.input].type
    if ref.attribute and kind != "codeset":
        raise where.error(f"input {ref.input!r} is a {kind}; only codeset inputs have "
                          f".{ref.attribute}")
    if ref.attribute and ref.attribute not in CODESET_ATTRIBUTES:
        raise where.error(f"a codeset input has .name and .project, not .{ref.attribute}")


def _check_step_output(ref: StepOutputRef, scope: _Scope, step: str, where: Where) -> None:
    if ref.step == step:
        raise where.error(f"step {step!r} cannot use its own output {ref.output!r}")
    if ref.step in scope.later:
        raise where.error(f"step {ref.step!r} runs after {step!r}; its outputs are not "
                          "known yet")
    if ref.step not in scope.outputs:
        raise where.error(f"unknown step {ref.step!r}")
    outputs = scope.outputs[ref.step]
    if ref.output not in outputs:
        listed = ", ".join(outputs) or "none"
        raise where.error(f"step {ref.step!r} has no output {ref.output!r} (its outputs: "
                          f"{listed})")
