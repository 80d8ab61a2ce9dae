"""Which cases are registered to which, and the cross-validation split that keeps their relatives apart.

An augmented sample ``<A>_reg_<B>`` is a relative of both A (its image,
labels and points) and B (its shape). If it trained in a fold where A or B
validates, validation would see a relative of a training sample. So pairs are
drawn only *within* one fold of nnU-Net's own default split (5-fold KFold,
seed 12345, on the sorted case ids: what nnU-Net's ``do_split`` writes when
no ``splits_final.json`` exists), and each sample is put exactly where its
source cases train: into the train list of every split except its own fold's,
into no val list. The original cases keep nnU-Net's default folds, so results
on the augmented dataset compare fold by fold with the plain one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..errors import PoiNnunetError

NNUNET_SPLIT_SEED = 12345
NUM_FOLDS = 5
SAMPLE_INFIX = "_reg_"

Splits = List[Dict[str, List[str]]]


@dataclass(frozen=True)
class Pair:
    """Case ``moving`` (A) carried into the shape of ``fixed`` (B); both validate in fold ``fold``."""

    moving: str
    fixed: str
    fold: int

    @property
    def name(self) -> str:
        return f"{self.moving}{SAMPLE_INFIX}{self.fixed}"


def default_splits(case_ids: Sequence[str], num_folds: int = NUM_FOLDS) -> Splits:
    """nnU-Net's default split of ``case_ids``, exactly as ``nnUNetTrainer.do_split`` makes it."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    cases = sorted(case_ids)
    if len(cases) < num_folds:
        raise PoiNnunetError(f"nnU-Net's {num_folds}-fold split needs at least {num_folds} training cases, "
                             f"the dataset has {len(cases)}")
    splits = generate_crossval_split(cases, seed=NNUNET_SPLIT_SEED, n_splits=num_folds)
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in splits]


def fold_members(splits: Splits) -> List[List[str]]:
    """The cases that validate in each fold (every case validates in exactly one), sorted."""
    return [sorted(s["val"]) for s in splits]


def choose_pairs(splits: Splits, per_case: int, seed: int) -> List[Pair]:
    """Up to ``per_case`` partners B for every case A, drawn without replacement from A's own fold.

    Deterministic for a given split and ``seed``: one generator, folds and cases in sorted order. A
    fold of ``k`` cases gives each of them at most ``k - 1`` partners.
    """
    if per_case < 1:
        raise PoiNnunetError(f"--registration must be at least 1, got {per_case}")
    rng = np.random.default_rng(seed)
    pairs: List[Pair] = []
    for fold, members in enumerate(fold_members(splits)):
        for moving in members:
            partners = [c for c in members if c != moving]
            count = min(per_case, len(partners))
            chosen = rng.choice(len(partners), size=count, replace=False) if count else []
            pairs += [Pair(moving, partners[i], fold) for i in sorted(int(j) for j in chosen)]
    return pairs


def shortfall(splits: Splits, per_case: int) -> List[Tuple[int, int]]:
    """``(fold, partners available per case)`` for every fold too small for ``per_case`` partners."""
    return [(f, len(m) - 1) for f, m in enumerate(fold_members(splits)) if len(m) - 1 < per_case]


def augmented_splits(splits: Splits, pairs: Sequence[Pair]) -> Splits:
    """``splits`` with every sample added to the train list of each split but its own fold's (module docstring)."""
    out: Splits = []
    for fold, split in enumerate(splits):
        extra = sorted(p.name for p in pairs if p.fold != fold)
        out.append({"train": sorted(split["train"]) + extra, "val": sorted(split["val"])})
    return out


def check_name_clashes(case_ids: Sequence[str], pairs: Sequence[Pair]) -> None:
    """A sample name must not be an existing case id (a case literally named ``x_reg_y``)."""
    clash = sorted({p.name for p in pairs} & set(case_ids))
    if clash:
        raise PoiNnunetError(f"augmented sample name(s) {clash[:3]} already name cases of the source dataset; "
                             "rename those cases")
