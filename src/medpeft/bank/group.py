"""Every servable task of a directory behind one bank interface, fully fine-tuned models included.

LoRA adapters and linear probes share one backbone (an :class:`~medpeft.bank.AdapterBank`);
a fully fine-tuned model replaces the backbone's weights, so each is a bank of its own
(its own backbone in memory). ``medpeft serve`` runs on this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medpeft.adapters_io.config import config_path, read_adapter_config
from medpeft.bank.bank import AdapterBank, unknown_task
from medpeft.bank.inputs import Input
from medpeft.bank.tasks import TaskInfo, task_folders
from medpeft.errors import ConfigError, WeightsError
from medpeft.methods import get_method


class BankGroup:
    """Banks answering as one: the tasks of all, each task run by the bank holding it.

    Attributes:
        banks: The shared-backbone bank (when the directory has such tasks) first, then one
            bank per fully fine-tuned model.
        skipped: Task name -> why it is not served.
    """

    def __init__(self, banks: Sequence[AdapterBank], skipped: Mapping[str, str] | None = None) -> None:
        if not banks:
            raise ConfigError("a bank group needs at least one bank")
        self.banks = list(banks)
        self.skipped = dict(skipped or {})
        self.device = self.banks[0].device

    @classmethod
    def from_directory(cls, directory: str | Path, **options: Any) -> BankGroup:
        """Every servable task of ``directory``; the others in :attr:`skipped` with their reason.

        ``options`` are :meth:`AdapterBank.from_folders`'s. Raises the first reason when no
        task can be served.
        """
        folders = task_folders(directory)
        own = {name: folder for name, folder in folders.items() if _is_full_model(folder)}
        shared = {name: folder for name, folder in folders.items() if name not in own}
        banks, skipped, errors = [], {}, []
        if shared:
            try:
                bank = AdapterBank.from_folders(shared, skip_unservable=True, **options)
            except (ConfigError, WeightsError) as error:
                errors.append(error)
                skipped.update(dict.fromkeys(shared, str(error)))
            else:
                banks.append(bank)
                skipped.update(bank.skipped)
        for name, folder in own.items():
            try:
                banks.append(AdapterBank.from_folders({name: folder}, **options))
            except (ConfigError, WeightsError) as error:
                errors.append(error)
                skipped[name] = str(error)
        if not banks:
            raise errors[0]
        return cls(banks, {name: skipped[name] for name in folders if name in skipped})

    def tasks(self) -> list[TaskInfo]:
        """Every task: the shared bank's, then the fully fine-tuned models."""
        return [info for bank in self.banks for info in bank.tasks()]

    def task(self, name: str) -> TaskInfo:
        return self._owner(name).task(name)

    def register(self, name: str, folder: str | Path) -> TaskInfo:
        """Add a task to the first bank (the shared one, when there is one)."""
        if any(name in bank.tasks_by_name() for bank in self.banks):
            raise ConfigError(f"task {name!r} is already served")
        return self.banks[0].register(name, folder)

    def load(self, name: str) -> None:
        self._owner(name).load(name)

    def unload(self, name: str) -> None:
        self._owner(name).unload(name)

    def preprocess(
        self, name: str, inputs: Mapping[str, Input], max_pixels: int | None = None
    ) -> dict[str, torch.Tensor]:
        return self._owner(name).preprocess(name, inputs, max_pixels)

    def predict(self, names: Sequence[str], inputs: Sequence[Mapping[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Per-sample probabilities, one forward per bank the batch's tasks are in."""
        if len(names) != len(inputs):
            raise ConfigError(f"{len(names)} task names for {len(inputs)} inputs")
        out: list[torch.Tensor] = [torch.empty(0)] * len(names)
        rows: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            rows.setdefault(self.banks.index(self._owner(name)), []).append(i)
        for bank, indices in rows.items():
            scores = self.banks[bank].predict([names[i] for i in indices], [inputs[i] for i in indices])
            for i, p in zip(indices, scores):
                out[i] = p
        return out

    def _owner(self, name: object) -> AdapterBank:
        for bank in self.banks:
            if name in bank.tasks_by_name():
                return bank
        raise unknown_task(name, [info.name for info in self.tasks()])


def _is_full_model(folder: Path) -> bool:
    """Whether the folder holds a fully fine-tuned model (False for an unreadable config:
    the shared bank names its reason)."""
    try:
        return get_method(read_adapter_config(config_path(folder).parent).method).trains_everything
    except (ConfigError, WeightsError):
        return False
