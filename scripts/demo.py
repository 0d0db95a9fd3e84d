"""`make demo` (after hash and render): build → train → serve the example codeset locally.

The step images are built into the local registry (127.0.0.1:5055, kept under ~/.cache),
an MLflow tracking server (sqlite store) and an S3-compatible artifact store (moto) start
on loopback, and `workflows/mlflow-e2e.yaml` runs on the Docker engine: the builder builds
the example's environment image (or skips it when the registry has it), the trainer
trains and logs the model, the server step serves it. One prediction request ends it.
Everything the demo starts is stopped at the end; the registry data is kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from devservices import MlflowServer, MotoS3
from devstack import local_stack, push_base_image

from images import build

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sklearn-logreg"
BUCKET = "mlflow-demo"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
EXTENSIONS = {
    "id": "mlflow-demo", "product": "mlflow", "version": "3.1.0", "zone": "local",
    "services": [
        {"id": "mlflow-tracking", "resource": "mlflow-tracking",
         "endpoints": [{"url": "{tracking}", "type": "internal",
                        "configuration": {"MLFLOW_TRACKING_URI": "{tracking}"}}]},
        {"id": "mlflow-store", "resource": "s3", "authrequired": True,
         "endpoints": [{"url": "{s3}", "type": "internal",
                        "configuration": {"MLFLOW_S3_ENDPOINT_URL": "{s3}",
                                          "AWS_DEFAULT_REGION": "us-east-1"}}],
         "credentials": [{"id": "demo", "scope": "global",
                          "configuration": {"AWS_ACCESS_KEY_ID": "{access}",
                                            "AWS_SECRET_ACCESS_KEY": "{secret}"}}]},
    ],
}


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def extensions_file(path: Path, tracking: str, s3: MotoS3) -> Path:
    """The demo's extension record (JSON is YAML) pointing at the services it started."""
    text = json.dumps(EXTENSIONS, indent=2)
    for key, value in {"tracking": tracking, "s3": s3.endpoint_url,
                       "access": s3.access_key, "secret": s3.secret_key}.items():
        text = text.replace("{" + key + "}", value)
    path.write_text(text)
    return path


def run_workflow(engine, registry, images: dict[str, str], extensions: Path,
                 output: Path) -> dict[str, str]:
    argv = [str(Path(sys.executable).parent / "mlflow-steps"), "workflow", "run",
            str(REPO / "workflows" / "mlflow-e2e.yaml"), "--codeset", str(EXAMPLE),
            "--extensions", str(extensions), "--output-json", str(output)]
    inputs = {"builder-image": images["builder"], "serve-image": images["serve"],
              "registry": registry.address, "insecure-registries": registry.address,
              "base-image": push_base_image(engine, registry)}
    for name, value in inputs.items():
        argv += ["--input", f"{name}={value}"]
    subprocess.run(argv, env={**os.environ, "DOCKER_HOST": engine.host}, check=True)
    return json.loads(output.read_text())


def predict(url: str) -> list:
    import requests

    answer = requests.post(url, json={"inputs": IRIS_ROWS}, timeout=60)
    answer.raise_for_status()
    return answer.json()["predictions"]


def main() -> int:
    with local_stack() as (engine, registry), tempfile.TemporaryDirectory(
            prefix="mls-demo-") as tmp:
        say(f"step images into the local registry {registry.address}")
        images = {name: build(engine, registry, name, "latest") for name in ("builder", "serve")}
        s3 = MotoS3(Path(tmp) / "s3").start()
        tracking = None
        try:
            s3.create_bucket(BUCKET)
            tracking = MlflowServer(Path(tmp) / "mlflow",
                                    default_artifact_root=f"s3://{BUCKET}/artifacts").start()
            say(f"tracking server {tracking.url} (sqlite), artifacts on S3 at "
                f"{s3.endpoint_url}; running workflows/mlflow-e2e.yaml")
            outputs = run_workflow(engine, registry, images,
                                   extensions_file(Path(tmp) / "extensions.json",
                                                   tracking.url, s3),
                                   Path(tmp) / "outputs.json")
            url = outputs["prediction-url"]
            say(f"POST {url} {json.dumps({'inputs': IRIS_ROWS})}")
            print(f"predictions: {predict(url)}")
        finally:
            engine.cli("rm", "-f", "mlflow-serve-local-sklearn-logreg", check=False)
            if tracking:
                tracking.stop()
            s3.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
