"""Stratified splits: the fixed test splits of the built-in datasets, validation splits and k folds."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence

import numpy as np


def stratified_split(
    strata: Sequence[Hashable],
    fraction: float,
    seed: int,
    *,
    at_least_one: bool = True,
    shuffled: bool = False,
) -> tuple[list[int], list[int]]:
    """Indices (kept, held out): `fraction` of every stratum held out, drawn by `random.Random(seed)`.

    Strata are visited in sorted order and each one's members shuffled before the cut.
    `at_least_one`: a stratum of 2+ whose share rounds to 0 still gives one.
    `shuffled`: both lists come back shuffled by the same generator (kept first); else sorted.
    """
    rng = random.Random(seed)
    members_of: dict[Hashable, list[int]] = {}
    for i, stratum in enumerate(strata):
        members_of.setdefault(stratum, []).append(i)
    kept: list[int] = []
    held: list[int] = []
    for stratum in sorted(members_of):
        members = members_of[stratum]
        rng.shuffle(members)
        n_held = round(len(members) * fraction)
        if at_least_one and fraction > 0 and n_held == 0 and len(members) >= 2:
            n_held = 1
        held.extend(members[:n_held])
        kept.extend(members[n_held:])
    if shuffled:
        rng.shuffle(kept)
        rng.shuffle(held)
        return kept, held
    return sorted(kept), sorted(held)


def stratified_folds(labels: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of every example: each class dealt round-robin after a seeded shuffle."""
    rng = np.random.RandomState(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for c in range(n_classes):
        members = np.where(labels == c)[0]
        rng.shuffle(members)
        fold[members] = np.arange(len(members)) % folds
    return fold


def _first_of_each_group(groups: Sequence[Hashable]) -> list[int]:
    """The index of every group's first member, in order of first appearance."""
    first: dict[Hashable, int] = {}
    for i, group in enumerate(groups):
        first.setdefault(group, i)
    return list(first.values())


def stratified_group_split(
    strata: Sequence[Hashable], groups: Sequence[Hashable], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """`stratified_split` over groups (stratum: the group's first member's): a group's members stay together.

    With every group of one member this is `stratified_split` exactly (sorted indices).
    """
    firsts = _first_of_each_group(groups)
    _, held = stratified_split([strata[i] for i in firsts], fraction, seed)
    held_groups = {groups[firsts[j]] for j in held}
    kept_idx = [i for i, group in enumerate(groups) if group not in held_groups]
    held_idx = [i for i, group in enumerate(groups) if group in held_groups]
    return kept_idx, held_idx


def stratified_group_folds(
    labels: np.ndarray, groups: Sequence[Hashable], n_classes: int, folds: int, seed: int
) -> np.ndarray:
    """`stratified_folds` over groups: every member of a group in its first member's fold."""
    firsts = _first_of_each_group(groups)
    fold_of_first = stratified_folds(labels[firsts], n_classes, folds, seed)
    fold_of = {groups[i]: int(f) for i, f in zip(firsts, fold_of_first)}
    return np.array([fold_of[group] for group in groups], dtype=np.int64)
