"""Several processes (GPUs, nodes) through Hugging Face Accelerate; one process unchanged.

``accelerate launch -m medpeft train CONFIG`` (or ``torchrun -m medpeft ...``) starts one
process per device with the environment ``torch.distributed`` expects (``WORLD_SIZE``,
``RANK``...). :func:`setup` joins them once per process through an ``Accelerator``; then

* the data loaders split every global batch (``data.batch_size``) between the
  processes and evaluation loaders give each process an equal, padded slice
  (`medpeft.data.loader`), so a run has the same optimizer steps on any number of
  processes and a checkpoint resumes on any number;
* the trainer wraps the model with :func:`wrap_model` (DDP; FSDP or DeepSpeed when
  ``accelerate config`` chose them) so gradients are averaged;
* evaluation gathers every process's rows in sample order with :func:`gather_rows`
  (padding dropped: no sample counted twice);
* only the main process (:func:`is_main`) writes into the run folder; the others write
  what they produce alike into a private scratch folder (:func:`writable_folder`).

Without that environment every function here is a no-op (one process, rank 0).
"""

from __future__ import annotations

import atexit
import functools
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@functools.cache
def _accelerator():
    """The process's ``Accelerator`` (created once; it initialises ``torch.distributed``).

    DDP looks for parameters a step did not use (a missing modality's MoRA expert, the
    heads of other tasks), which costs a graph walk per step but never hangs.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    atexit.register(_leave)
    return accelerator


def setup() -> bool:
    """Join the launched processes (nothing to do alone); True when several run. The process
    group is destroyed when the interpreter exits (its threads joined before torch's
    static destructors run)."""
    if launched_processes() > 1:
        _accelerator()
    return is_distributed()


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is one of several joined processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's index (0 alone)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of joined processes (1 alone)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes files (rank 0; always true alone)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (no-op alone)."""
    if is_distributed():
        dist.barrier()


def process_device() -> torch.device:
    """This process's device: its own GPU (or the CPU) under a launcher, else CUDA if available."""
    if is_distributed():
        return _accelerator().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def wrap_model(model: nn.Module) -> nn.Module:
    """The model wrapped for gradient averaging across processes; the model itself alone.

    Parameters stay shared with ``model``: checkpoints and adapters are written from the
    unwrapped model, under the same names on any number of processes.
    """
    if not is_distributed():
        return model
    return _accelerator().prepare_model(model, device_placement=True)


def release() -> None:
    """Drop the ``Accelerator``'s references to wrapped models (after a fit; no-op alone)."""
    if is_distributed():
        _accelerator().free_memory()


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Every process's equal-length slice ``[L, ...]`` joined in rank order, cut to ``total`` rows.

    The slices are the contiguous, padded shards of an evaluation loader, so the result is
    in sample order with the padding dropped. Alone, ``local[:total]``.
    """
    if not is_distributed():
        return local[:total]
    part = local.contiguous().to(_collective_device())
    parts = [torch.empty_like(part) for _ in range(world_size())]
    dist.all_gather(parts, part)
    return torch.cat(parts)[:total].to(local.device)


def all_sum(values: list[float]) -> list[float]:
    """``values`` summed over the processes (e.g. loss sums and sample counts)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def _collective_device() -> torch.device:
    """Where collectives need their tensors: the GPU for NCCL, the CPU for gloo."""
    return process_device() if dist.get_backend() == "nccl" else torch.device("cpu")


@functools.cache
def _scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"medpeft-rank{rank()}-")


def writable_folder(folder: str | Path) -> Path:
    """Where this process writes what ``folder`` would receive.

    The main process writes into ``folder`` itself; every other process gets a private
    scratch copy of the path (removed when the process exits), so the files all processes
    produce alike (adapter, metrics, reports) reach the run folder once.
    """
    if is_main():
        return Path(folder)
    return Path(_scratch().name) / str(Path(folder).resolve()).lstrip("/\\").replace(":", "")
