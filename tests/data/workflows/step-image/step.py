"""Test step: reports what it was given; FUSEML_MODE = ok | fail | skip | nooutput."""

import json
import os
import sys
from pathlib import Path

env = dict(os.environ)
mode = env.get("FUSEML_MODE", "ok")
print(f"mode {mode} in {env.get('FUSEML_ENV_WORKFLOW_NAME')}", flush=True)
print(f"secret is {env.get('AWS_SECRET_ACCESS_KEY', '')}", flush=True)
if mode == "fail":
    print("about to fail", flush=True)
    sys.exit(int(env.get("FUSEML_EXIT", "3")))
if mode == "skip":
    print("mlflow-steps: reg/x:tag already exists (sha256:00); build skipped", flush=True)
if mode == "nooutput":
    sys.exit(0)
fuseml = Path(".fuseml")
report = {
    "env": {k: v for k, v in env.items()
            if k.startswith(("FUSEML_", "TASK_", "AWS_", "DOCKER_", "KEY_", "STORE_"))},
    "cwd": os.getcwd(),
    "files": sorted(os.listdir(".")),
    "org": (fuseml / "_org").read_text() if fuseml.is_dir() else None,
    "project": (fuseml / "_project").read_text() if fuseml.is_dir() else None,
    "socket": os.path.exists("/var/run/docker.sock"),
    "workspace_writable": os.access(".", os.W_OK),
    "pip": Path(env["PIP_CONFIG_FILE"]).read_text() if "PIP_CONFIG_FILE" in env else None,
}
results = Path("/tekton/results")
(results / env["FUSEML_REPORT"]).write_text(json.dumps(report, sort_keys=True))
(results / env["TASK_RESULT"]).write_text(env.get("FUSEML_VALUE", "") + "\n")
