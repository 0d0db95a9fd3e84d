"""`mlflow-steps inspect`: what a runtime image holds, read from the registry alone."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mlflow_steps.build.inspect import codeset_matches, index_platforms, read_image
from mlflow_steps.cli.inputs import hosts
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.terminal import report, shown
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.platforms import parse_platforms
from mlflow_steps.image.reference import ImageRef, check_reference


@click.command("inspect")
@click.argument("image")
@click.option("--codeset", type=click.Path(path_type=Path, file_okay=False),
              help="Also say whether this codeset hashes to the image's environment "
                   "[default: the current directory when it has an MLproject].")
@click.option("--insecure-registries", default="",
              help="Comma-separated registries reached over HTTP.")
@click.option("--registry-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="CA bundle for a TLS registry with a private CA.")
@click.option("--write-pylock", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the image's PEP 751 lock here (`uv pip install -r FILE` installs "
                   "the same packages).")
@click.option("--platform",
              help="Of an image index, the one platform to show and write the lock of "
                   "[default: every platform; --write-pylock needs one].")
def inspect_command(image: str, codeset: Path | None, insecure_registries: str,
                    registry_ca: Path | None, write_pylock: Path | None,
                    platform: str | None) -> None:
    """What runtime IMAGE holds (env tag, spec, strategy, base, lock), from the registry
    alone: no pull, no engine. Of an image index: its platforms, then each one's."""
    check_reference(image, source="inspect", field="IMAGE")
    client = RegistryClient(
        ImageRef.parse(image).registry,
        insecure_registries=hosts(insecure_registries),
        verify=str(registry_ca) if registry_ca else True)
    index = index_platforms(image, client)
    platforms = index[1] if index else ["linux/amd64"]
    shown_platforms = platforms
    if platform is not None:
        wanted = parse_platforms(platform)
        if index is None or len(wanted) > 1 or wanted[0] not in platforms:
            raise StepError(f"names one platform of an image index ({', '.join(platforms)})"
                            if index else "applies to an image index; this is one image",
                            source=image, field="platform")
        shown_platforms = list(wanted)
    if write_pylock is not None and len(shown_platforms) > 1:
        raise StepError(f"the image index has a lock per platform: name one with --platform "
                        f"({', '.join(platforms)})", source=image, field="write_pylock")
    records = [read_image(image, client, one) for one in shown_platforms]
    if write_pylock is not None:
        if records[0].pylock is None:
            raise StepError("the image records no pylock.toml (built before images carried "
                            "one)", source=image, field="write_pylock")
        write_pylock.write_text(records[0].pylock)
    if index:
        click.echo(report([f"index      {image}", f"digest     {index[0]}",
                           f"platforms  {', '.join(platforms)}"]))
    for record in records:
        click.echo(report(record.lines()))
    if codeset is None and Path("MLproject").is_file():
        codeset = Path(".")
    if codeset is not None:
        click.echo(shown(codeset_matches(records[0], codeset, dict(os.environ),
                                         tuple(platforms))))
