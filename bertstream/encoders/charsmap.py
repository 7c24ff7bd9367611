"""A SentencePiece "precompiled charsmap" from a per-codepoint replacement map, for
`tokenizers.normalizers.Precompiled`.

The blob is: u32 size of the trie in bytes, the trie (a darts-clone double array of u32 units), then
the pool of NUL-terminated replacement strings the trie's values point into. A unit holds a label
(low 8 bits), a has-leaf flag (bit 8) and an offset to its children (bits 10..30, or bits 10..30
shifted by 8 when bit 9 is set); the child for byte c of the node at position p with offset o is at
p ^ o ^ c, and a key's value sits in a leaf unit (bit 31 set) at p ^ o.
"""

from __future__ import annotations

import struct

HAS_LEAF = 1 << 8
LEAF = 1 << 31
MAX_DIRECT_OFFSET = 1 << 21


class _Node:
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.value: int | None = None


def build_charsmap(mapping: dict[int, str]) -> bytes:
    """The precompiled charsmap replacing each codepoint key by its string (empty: deleted)."""
    if 0 in mapping:
        raise ValueError("U+0000 cannot be a key (darts-clone keys are NUL-terminated)")
    pool = bytearray()
    where: dict[str, int] = {}
    for out in sorted(set(mapping.values())):
        where[out] = len(pool)
        pool += out.encode("utf-8") + b"\0"
    root = _Node()
    for cp in sorted(mapping):
        node = root
        for byte in chr(cp).encode("utf-8"):
            node = node.children.setdefault(byte, _Node())
        node.value = where[mapping[cp]]
    units = _double_array(root)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(pool)


def _double_array(root: _Node) -> list[int]:
    units: list[int] = [0] * 256
    # Positions taken by a unit, or reserved as some node's base: every node needs its own base, or a
    # lookup could land on another node's child.
    used = bytearray(256)
    used[0] = 1  # the root
    first_free = 1
    queue: list[tuple[_Node, int]] = [(root, 0)]
    while queue:
        node, pos = queue.pop()
        labels = sorted(node.children)
        if node.value is not None:
            labels.insert(0, 0)  # the leaf unit sits at the base itself
        if not labels:
            continue
        while first_free < len(used) and used[first_free]:
            first_free += 1
        base = _find_base(labels, used, first_free)
        while len(units) <= (base | 0xFF):
            units.extend([0] * 256)
            used.extend(bytes(256))
        offset = pos ^ base
        if offset >= MAX_DIRECT_OFFSET:
            raise ValueError("charsmap too large for direct offsets")
        units[pos] |= offset << 10 | (HAS_LEAF if node.value is not None else 0)
        used[base] = 1
        for label in labels:
            used[base ^ label] = 1
        if node.value is not None:
            units[base] = LEAF | node.value
        for label, child in node.children.items():
            units[base ^ label] = label
            queue.append((child, base ^ label))
    return units


def _find_base(labels: list[int], used: bytearray, start: int) -> int:
    """The first base, from free position `start` on, whose own position and children's are free."""
    size = len(used)
    candidate = start
    while True:
        if candidate >= size or not used[candidate]:
            base = candidate ^ labels[0]
            if (base >= size or not used[base]) and all(
                (base ^ label) >= size or not used[base ^ label] for label in labels
            ):
                return base
        candidate += 1
