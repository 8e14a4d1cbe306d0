"""MoRA hyper-parameters and their checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medpeft.methods.base import check_blocks, is_int, require


@dataclass
class MoraSettings:
    """MoRA hyper-parameters (paper: rank 4, a branch around block 0)."""

    rank: int = 4
    blocks: Sequence[int] | None = (0,)
    targets: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.blocks = None if self.blocks is None else tuple(self.blocks)
        self.targets = None if self.targets is None else tuple(self.targets)
        require(is_int(self.rank) and self.rank >= 1, "mora.rank", "an integer >= 1", self.rank)
        check_blocks("mora.blocks", self.blocks)
