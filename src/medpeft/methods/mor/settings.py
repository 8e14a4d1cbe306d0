"""MoR hyper-parameters and their checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medpeft.methods.base import check_blocks, is_int, require
from medpeft.methods.mor.layer import DEFAULT_RANKS


@dataclass
class MorSettings:
    """MoR hyper-parameters (EI defaults: both MLP Linears of all blocks, ranks 2/4/8).

    ``fc1``/``fc2`` are roles: the MLP Linears of every backbone family (timm's
    ``mlp.fc1``/``mlp.fc2``, open_clip's ``mlp.c_fc``/``mlp.c_proj``).
    """

    targets: Sequence[str] = ("fc1", "fc2")
    ranks: Sequence[int] = DEFAULT_RANKS
    blocks: Sequence[int] | None = None
    per_modality: bool = False

    def __post_init__(self) -> None:
        ok = isinstance(self.targets, Sequence) and not isinstance(self.targets, str)
        require(ok, "mor.targets", "a list of Linear name suffixes", self.targets)
        self.targets = tuple(self.targets)
        ok = bool(self.targets) and all(isinstance(t, str) and t for t in self.targets)
        require(ok, "mor.targets", "at least one non-empty Linear name suffix", self.targets)
        ok = isinstance(self.ranks, Sequence) and not isinstance(self.ranks, str)
        require(ok, "mor.ranks", "a list of expert ranks", self.ranks)
        self.ranks = tuple(self.ranks)
        ok = bool(self.ranks) and all(is_int(r) and r >= 1 for r in self.ranks)
        require(ok, "mor.ranks", "a non-empty list of integers >= 1", self.ranks)
        ok = self.blocks is None or (
            isinstance(self.blocks, Sequence) and not isinstance(self.blocks, str)
        )
        require(ok, "mor.blocks", "null (all blocks) or a list of block indices >= 0", self.blocks)
        self.blocks = None if self.blocks is None else tuple(self.blocks)
        check_blocks("mor.blocks", self.blocks)
        require(isinstance(self.per_modality, bool), "mor.per_modality", "true or false", self.per_modality)
