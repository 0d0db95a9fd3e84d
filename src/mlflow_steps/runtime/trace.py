"""`mlflow-steps trace MODEL_URI`: from a model back to its run, image and environment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlflow_steps.core.errors import StepError
from mlflow_steps.image.reference import check_digest, check_reference, pinned
from mlflow_steps.runtime.step import IMAGE_TAG_VARIABLES

TRACE_TAGS = (*IMAGE_TAG_VARIABLES.values(), "mlflow_steps.tooling_version")
_RUNS_URI = re.compile(r"runs:/(?P<run>[0-9a-zA-Z]+)(?:/.*)?")
_MODEL_ID = re.compile(r"models:/(?P<id>m-[0-9a-f]+)")
_MODEL_VERSION = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>.+))")
_RUN_ID = re.compile(r"[0-9a-zA-Z][\w-]{0,255}")  # MLflow's own run id grammar


@dataclass(frozen=True)
class Trace:
    """Where a model came from: its run and the image that trained it."""

    model_uri: str
    run_id: str
    tags: dict[str, str]

    @property
    def image(self) -> str | None:
        """The image as one pullable reference, name@digest when the run recorded the
        digest (else as recorded)."""
        image = self.tags.get("mlflow_steps.image")
        digest = self.tags.get("mlflow_steps.image_digest")
        if image and digest:
            return pinned(image, digest, source=self.model_uri,
                          field="tags mlflow_steps.image and image_digest")
        return image

    def lines(self) -> list[str]:
        """The report, one line each (values as recorded: print them with
        ``terminal.report``). The image is one line, name@digest; a digest recorded without
        an image has a line of its own."""
        image = self.image
        values = {"env tag": self.tags.get("mlflow_steps.env_tag"), "image": image,
                  "digest": None if image else self.tags.get("mlflow_steps.image_digest"),
                  "tooling": self.tags.get("mlflow_steps.tooling_version")}
        return [f"model      {self.model_uri}", f"run        {self.run_id or '(none)'}",
                *(f"{title:<10} {value}" for title, value in values.items() if value)]


def trace_model(model_uri: str, client: Any) -> Trace:
    """The run and image tags of ``model_uri`` (models:/<id>, models:/<name>/<version>,
    models:/<name>@<alias>, runs:/<run>/<path>)."""
    from mlflow.exceptions import MlflowException  # MLflow loads only when a step talks to it

    try:
        return _trace(model_uri.strip(), client)
    except MlflowException as exc:
        first = (str(getattr(exc, "message", exc)).strip().splitlines() or ["not found"])[0]
        raise StepError(first, source=model_uri) from None


def _trace(model_uri: str, client: Any) -> Trace:
    run_id, model_tags = "", {}
    if match := _RUNS_URI.fullmatch(model_uri):
        run_id = match["run"]
    elif match := _MODEL_ID.fullmatch(model_uri):
        model = client.get_logged_model(match["id"])
        run_id, model_tags = model.source_run_id or "", dict(model.tags)
    elif match := _MODEL_VERSION.fullmatch(model_uri):
        version = (client.get_model_version(match["name"], match["version"]) if match["version"]
                   else client.get_model_version_by_alias(match["name"], match["alias"]))
        run_id = version.run_id or ""
        model_id = getattr(version, "model_id", None)
        if model_id:
            model_tags = dict(client.get_logged_model(model_id).tags)
    else:
        raise StepError("not a model URI: use models:/<model id>, models:/<name>/<version>, "
                        "models:/<name>@<alias> or runs:/<run id>/<path>", source=model_uri)
    run_id = run_id or model_tags.get("mlflow_steps.run_id", "")
    tags = {key: value for key, value in model_tags.items() if key in TRACE_TAGS}
    if run_id:
        if not _RUN_ID.fullmatch(run_id):
            raise StepError(f"{run_id[:80]!r} is not a run id", source=model_uri,
                            field="run id")
        run_tags = client.get_run(run_id).data.tags
        tags = {**{key: run_tags[key] for key in TRACE_TAGS if key in run_tags}, **tags}
    if not tags:
        raise StepError("carries no mlflow-steps trace (it was not trained by the runtime "
                        "step of mlflow-steps)", source=model_uri)
    _check_image_tags(tags, model_uri)
    return Trace(model_uri, run_id, tags)


def _check_image_tags(tags: dict[str, str], source: str) -> None:
    """The recorded image and digest, checked with the image-reference grammar before any
    request is built from them (a crafted tag must not steer a registry request)."""
    image = tags.get("mlflow_steps.image")
    if not image:
        return
    check_reference(image, source=source, field="tag mlflow_steps.image")
    digest = tags.get("mlflow_steps.image_digest")
    if digest:
        check_digest(digest, source=source, field="tag mlflow_steps.image_digest")
