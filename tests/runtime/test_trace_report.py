"""`trace`'s report (pure logic): the image is one pullable reference, name@digest."""

from __future__ import annotations

import pytest

from mlflow_steps.core.errors import StepError
from mlflow_steps.image.reference import ImageRef, check_reference
from mlflow_steps.runtime.trace import Trace

SHA256 = "sha256:" + "ab" * 32
SHA512 = "sha512:" + "cd" * 64


def report(**tags: str) -> dict[str, str]:
    trace = Trace("models:/m-1", "run1", {f"mlflow_steps.{key}": value
                                          for key, value in tags.items()})
    return {line[:10].strip(): line[11:] for line in trace.lines()}


@pytest.mark.parametrize(("image", "digest", "expected"), [
    ("reg.example:5000/mlflow/trainer:0123abcd", SHA256,
     f"reg.example:5000/mlflow/trainer@{SHA256}"),
    ("python:3.11-slim", SHA256, f"python@{SHA256}"),  # as written: Docker Hub pulls it
    (f"localhost:5000/a/b:1@sha256:{'00' * 32}", SHA256, f"localhost:5000/a/b@{SHA256}"),
    ("reg.example/mlflow/trainer:1", SHA512, f"reg.example/mlflow/trainer@{SHA512}"),
])
def test_the_image_is_one_pullable_reference(image: str, digest: str, expected: str) -> None:
    fields = report(env_tag="0123abcd", image=image, image_digest=digest,
                    tooling_version="1.0")
    assert fields == {"model": "models:/m-1", "run": "run1", "env tag": "0123abcd",
                      "image": expected, "tooling": "1.0"}
    check_reference(expected, source="test", field="image")
    assert ImageRef.parse(expected).tag == digest


def test_without_a_digest_the_image_is_as_recorded_and_a_digest_alone_is_shown() -> None:
    assert report(image="reg.example/mlflow/trainer:1")["image"] == \
        "reg.example/mlflow/trainer:1"
    alone = report(image_digest=SHA256)
    assert alone["digest"] == SHA256 and "image" not in alone


def test_a_crafted_digest_is_refused_in_one_line() -> None:
    with pytest.raises(StepError, match="image_digest: 'sha256:x' is not a digest"):
        report(image="reg.example/mlflow/trainer:1", image_digest="sha256:x")
