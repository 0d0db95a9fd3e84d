"""Broken workflow files → the line, field path and words of the one-line error."""

from __future__ import annotations

from typing import NamedTuple

HEAD = """name: wf
inputs:
  - name: code
    type: codeset
  - name: greeting
    default: hi
outputs:
  - name: result
"""
# Line 9 is "steps:", line 10 the first step.
STEP = """steps:
  - name: first
    image: img:1
    inputs:
      - name: code
        codeset:
          name: '{{ inputs.code }}'
          path: /project
      - name: greeting
        value: '{{ inputs.greeting }}'
    outputs:
      - name: result
"""
VALID = HEAD + STEP


class Case(NamedTuple):
    text: str
    line: int
    field: str
    words: tuple[str, ...]


def _edit(old: str, new: str, text: str = VALID) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _append(step: str) -> str:
    return VALID + step


SECOND = """  - name: second
    image: img:2
    inputs:
      - name: x
        value: '{}'
    outputs:
      - name: other
"""

BAD_WORKFLOWS: dict[str, Case] = {
    "malformed YAML": Case("name: wf\nsteps: [\n", 3, "", ("malformed YAML",)),
    "not a mapping": Case("- a\n- b\n", 1, "", ("expected a mapping", "a list")),
    "two documents": Case(VALID + "---\n" + VALID, 1, "", ("one YAML document", "found 2")),
    "unknown top-level key": Case(_edit("name: wf\n", "name: wf\nversion: 2\n"), 2, "version",
                                  ("unknown key 'version'",)),
    "missing workflow name": Case(_edit("name: wf\n", "description: x\n"), 1, "",
                                  ("missing required key 'name'",)),
    "no steps": Case(HEAD + "steps: []\n", 9, "steps", ("at least one step",)),
    "step without name": Case(_edit("  - name: first\n    image", "  - image"), 10, "steps[0]",
                              ("step has no 'name'",)),
    "step without image": Case(_edit("    image: img:1\n", ""), 10, "steps[0]",
                               ("missing required key 'image'",)),
    "unknown step key": Case(_edit("    image: img:1\n", "    image: img:1\n    command: [x]\n"),
                             12, "steps[0].command", ("unknown key 'command'",)),
    "GPUs: none": Case(_edit("    image: img:1\n", "    image: img:1\n    resources:\n"
                             "      limits:\n        nvidia.com/gpu: 0\n"), 14,
                       "steps[0].resources.limits.nvidia.com/gpu",
                       ("whole number of GPUs from 1 to 64", "'0'")),
    "GPUs: not a number": Case(_edit("    image: img:1\n", "    image: img:1\n    resources:\n"
                                     "      limits:\n        nvidia.com/gpu: one\n"), 14,
                               "steps[0].resources.limits.nvidia.com/gpu", ("'one'",)),
    "resources other than GPUs": Case(
        _edit("    image: img:1\n", "    image: img:1\n    resources:\n      limits:\n"
              "        memory: 4Gi\n"), 14, "steps[0].resources.limits.memory",
        ("unknown key 'memory'", "allowed: nvidia.com/gpu")),
    "resource requests": Case(
        _edit("    image: img:1\n", "    image: img:1\n    resources:\n      requests:\n"
              "        nvidia.com/gpu: 1\n"), 13, "steps[0].resources.requests",
        ("unknown key 'requests'", "allowed: limits")),
    "duplicate step name": Case(_append(SECOND.replace("second", "first")), 21, "steps[1].name",
                                ("duplicate step name 'first'",)),
    "step names that collide as Tekton tasks": Case(
        _append(SECOND.replace("second", "First")), 21, "steps[1].name",
        ("step 'First' and step 'first' both become the Tekton task 'first'", "rename one")),
    "step name that collides with the codeset task": Case(
        _append(SECOND.replace("second", "fuseml codeset")), 21, "steps[1].name",
        ("the codeset task", "'fuseml-codeset'")),
    "step name without a letter or digit": Case(
        _append(SECOND.replace("second", "'--'")), 21, "steps[1].name",
        ("no letter or digit",)),
    "input without name": Case(_edit("  - name: greeting\n    default", "  - default"), 5,
                               "inputs[1]", ("input has no 'name'",)),
    "duplicate input name": Case(_edit("  - name: greeting\n", "  - name: code\n"), 5,
                                 "inputs[1].name", ("duplicate input name 'code'",)),
    "unknown input type": Case(_edit("    type: codeset\n", "    type: file\n"), 4,
                               "inputs[0].type", ("unknown input type 'file'",)),
    "duplicate output name": Case(_edit("  - name: result\n", "  - name: result\n"
                                        "  - name: result\n"), 9, "outputs[1].name",
                                  ("duplicate output name 'result'",)),
    "workflow output nobody produces": Case(_edit("  - name: result\nsteps", "  - name: nope\n"
                                                  "steps"), 8, "outputs[0].name",
                                            ("'nope' is not an output of any step",)),
    "duplicate step output": Case(_edit("      - name: result\n", "      - name: result\n"
                                        "      - name: result\n"), 21,
                                  "steps[0].outputs[1].name",
                                  ("duplicate step output name 'result'",)),
    "duplicate step input": Case(_edit("      - name: greeting\n", "      - name: code\n"),
                                 17, "steps[0].inputs[1].name",
                                 ("duplicate step input name 'code'",)),
    "step input with value and codeset": Case(
        _edit("        value: '{{ inputs.greeting }}'\n",
              "        value: x\n        codeset: {name: '{{ inputs.code }}'}\n"),
        17, "steps[0].inputs[1]", ("either a 'value' or a 'codeset'",)),
    "unknown input in expression": Case(_edit("{{ inputs.greeting }}", "{{ inputs.greting }}"),
                                        18, "steps[0].inputs[1].value",
                                        ("unknown input 'greting'", "code, greeting")),
    "unknown step in expression": Case(
        _edit("image: img:1", "image: '{{ steps.build.outputs.image }}'"), 11,
        "steps[0].image", ("unknown step 'build'",)),
    "step referring to a later step": Case(
        _append(SECOND.replace("'{}'", "'x'")).replace(
            "'{{ inputs.greeting }}'", "'{{ steps.second.outputs.other }}'"),
        18, "steps[0].inputs[1].value", ("'second' runs after 'first'",)),
    "step referring to itself": Case(
        _edit("{{ inputs.greeting }}", "{{ steps.first.outputs.result }}"), 18,
        "steps[0].inputs[1].value", ("own output 'result'",)),
    "dangling step output (FuseML docs)": Case(
        _append(SECOND.replace("'{}'", "'{{ steps.first.outputs.image }}'")), 25,
        "steps[1].inputs[0].value", ("step 'first' has no output 'image'", "result")),
    "unterminated expression": Case(_edit("{{ inputs.greeting }}", "{{ inputs.greeting "), 18,
                                    "steps[0].inputs[1].value", ("unterminated '{{'",)),
    "unparsable expression": Case(_edit("{{ inputs.greeting }}", "{{ greeting }}"), 18,
                                  "steps[0].inputs[1].value", ("cannot parse", "inputs.NAME")),
    "attribute of a string input": Case(_edit("{{ inputs.greeting }}",
                                              "{{ inputs.greeting.name }}"), 18,
                                        "steps[0].inputs[1].value",
                                        ("'greeting' is a string", ".name")),
    "unknown codeset attribute": Case(_edit("{{ inputs.greeting }}", "{{ inputs.code.version }}"),
                                      18, "steps[0].inputs[1].value", ("not .version",)),
    "undeclared extension": Case(_edit("{{ inputs.greeting }}", "{{ extension.mlflow.url }}"),
                                 18, "steps[0].inputs[1].value",
                                 ("unknown extension 'mlflow'", "none")),
    "unknown extension attribute": Case(
        _edit("{{ inputs.greeting }}", "{{ extension.mlflow.password }}"), 18,
        "steps[0].inputs[1].value", ("cannot parse",)),
    "codeset name not an input": Case(_edit("'{{ inputs.code }}'", "my-codeset"), 15,
                                      "steps[0].inputs[0].codeset.name",
                                      ("'{{ inputs.CODESET }}'",)),
    "codeset from a string input": Case(_edit("'{{ inputs.code }}'", "'{{ inputs.greeting }}'"),
                                        15, "steps[0].inputs[0].codeset.name",
                                        ("'greeting' is not of type codeset",)),
    "relative codeset path": Case(_edit("path: /project", "path: project"), 16,
                                  "steps[0].inputs[0].codeset.path", ("must be absolute",)),
    "extension without name": Case(_edit("    outputs:\n      - name: result\n",
                                         "    outputs:\n      - name: result\n"
                                         "    extensions:\n      - product: mlflow\n"), 22,
                                   "steps[0].extensions[0]", ("extension has no 'name'",)),
    "bad version constraint": Case(_edit("    outputs:\n      - name: result\n",
                                         "    outputs:\n      - name: result\n"
                                         "    extensions:\n      - name: m\n"
                                         "        version: '>>1.x<'\n"), 23,
                                   "steps[0].extensions[0].version",
                                   ("neither a version nor a semver range",)),
    "invalid env name": Case(_edit("    outputs:\n", "    env:\n      - name: 1BAD\n"
                                   "        value: x\n    outputs:\n"), 20,
                             "steps[0].env[0].name", ("not a valid environment variable name",)),
    "duplicate env name": Case(_edit("    outputs:\n", "    env:\n      - name: A\n"
                                     "      - name: A\n    outputs:\n"), 21,
                               "steps[0].env[1].name", ("duplicate env name 'A'",)),
    "FuseML image output": Case(_edit("      - name: result\n", "      - name: result\n"
                                      "        image: {name: x}\n"), 21,
                                "steps[0].outputs[0].image", ("not supported",)),
    "list where a string belongs": Case(_edit("image: img:1", "image: [a, b]"), 11,
                                        "steps[0].image", ("expected a string", "a list")),
    "key given twice": Case(_edit("    image: img:1\n", "    image: img:1\n    image: img:2\n"),
                            12, "steps[0].image", ("given twice",)),
}

# Nesting, YAML errors with secret tokens, and values YAML reads oddly (the loader is the one
# the codeset files use). SECRET must never appear in a message.
SECRET = "s3cr3t"
DEEP = 100_000
BAD_WORKFLOWS.update({
    "steps nested 100k deep ([[[...]]])": Case("name: wf\nsteps: " + "[" * DEEP, 2, "",
                                               ("nesting too deep",)),
    "mapping nested 100k deep": Case("name: wf\nsteps:\n- " + "{a: " * DEEP, 3, "",
                                     ("nesting too deep",)),
    "block sequences 100k deep": Case("- " * DEEP + "x\n", 1, "", ("nesting too deep",)),
    "recursive alias": Case("name: wf\nsteps: &s\n- name: a\n  image: x\n  inputs: *s\n", 5, "",
                            ("recursive alias",)),
    "alias token": Case(VALID.replace("image: img:1", f"image: *{SECRET}tok"), 11, "",
                        ("malformed YAML", "column 12", "undefined alias")),
    "tag token": Case(VALID.replace("image: img:1", f"image: !{SECRET}tok x"), 11, "",
                      ("malformed YAML", "unknown tag")),
    "anchor token defined twice": Case(
        VALID.replace("image: img:1", f"image: &{SECRET} a\n    env: &{SECRET} []"), 12, "",
        ("duplicate anchor",)),
    "bad escape in a quoted secret": Case(
        VALID.replace("default: hi", f'default: "\\x{SECRET}"'), 6, "", ("hexadecimal",)),
    "control character": Case(VALID.replace("default: hi", f"default: {SECRET}\x1b"), 6, "",
                              ("control character",)),
    "tab indentation": Case(VALID.replace("    image: img:1", "\timage: img:1"), 11, "",
                            ("a tab", "indent with spaces")),
})


# Files that are not plain small text files: (entry as in bad_input_corpus, words).
def _sparse(size: int):
    from support.bad_input_corpus import Sparse

    return Sparse(size, VALID.encode())


def bad_workflow_files():
    """{case: (entry, words)}; entries are written with bad_input_corpus.materialise."""
    from support.bad_input_corpus import Fifo, Link

    return {
        "workflow is a FIFO": (Fifo(), ("wf.yaml: a FIFO, not a regular file",)),
        "workflow of 200 MB (sparse)": (_sparse(200 * 1024 * 1024),
                                        ("file is 209.7 MB, over the 5 MiB limit for workflow",)),
        "workflow of 6 MiB": (VALID + "#" * (6 * 1024 * 1024) + "\n", ("over the 5 MiB limit",)),
        "workflow is a dangling symlink": (Link("gone.yaml"),
                                           ("wf.yaml",)),
        "workflow is a binary file": (b"\x89PNG\r\n\x1a\n\x00\x00", ("binary content",)),
        "workflow is not UTF-8": (VALID.encode().replace(b"hi", b"h\xe9"), ("not UTF-8",)),
    }


# Extension files (FuseML records) read through the same reader and loader.
RECORD = """id: mlflow
product: mlflow
services:
  - id: tracking
    endpoints:
      - url: http://mlflow:5000
"""


def bad_extension_files():
    """{case: (entry or {name: entry} for a directory, words)}."""
    from support.bad_input_corpus import Fifo, Link, Sparse

    return {
        "extension file is a FIFO": (Fifo(), ("ext.yaml: a FIFO, not a regular file",)),
        "extension file of 200 MB (sparse)": (
            Sparse(200 * 1024 * 1024, RECORD.encode()),
            ("file is 209.7 MB, over the 5 MiB limit for extension files",)),
        "extension file nested 100k deep": ("[" * DEEP, ("ext.yaml:1", "nesting too deep")),
        "extension JSON nested 100k deep": ('{"a": ' * DEEP, ("ext.yaml:1", "nesting too deep")),
        "extension file with an alias token": (
            RECORD.replace("http://mlflow:5000", f"*{SECRET}tok"),
            ("ext.yaml:6", "undefined alias")),
        "extension file with a tag token": (
            RECORD.replace("http://mlflow:5000", f"!{SECRET}tok x"),
            ("ext.yaml:6", "malformed YAML")),
        "extension file with a recursive alias": (
            "- &r {id: a, services: [*r]}\n", ("ext.yaml:1", "recursive alias")),
        "extension file is binary": (b"\x00\x01\x02", ("binary content",)),
        "extension directory with a FIFO": ({"a.yaml": RECORD, "b.yaml": Fifo()},
                                            ("b.yaml: a FIFO",)),
        "extension directory with a looping symlink": (
            {"a.yaml": RECORD, "b.yaml": Link("b.yaml")}, ("b.yaml: symlink loops",)),
        "extension directory with a dangling symlink": (
            {"a.json": Link("missing.json")}, ("a.json: symlink to 'missing.json' does not",)),
        "extension directory with a subdirectory named .yaml": (
            {"a.yaml": RECORD, "sub.yaml/x": "x"}, ("sub.yaml: a directory, not a regular",)),
    }
