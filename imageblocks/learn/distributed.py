"""Data-parallel training through `torchrun` (PyTorch DDP); nothing home-made beyond what it needs.

Launch any training script or the CLI with `torchrun --nproc_per_node=N ...`: the Learner sees
torchrun's environment (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`), joins the process group (NCCL on
CUDA, gloo on CPU), wraps its model in `DistributedDataParallel` for the training steps, and
gives each loader it iterates this process's `Shard` (`shard_loader`): the loaders then sample
every epoch through `DistributedSampler`, and know no process group. Training shards drop the
last few items so that every process takes the same number of steps and each item is seen at
most once per epoch; validation shards are padded by the sampler and the padding removed when predictions are
gathered, so every process computes metrics on exactly the whole validation set. Only rank 0
prints the epoch table and writes files (checkpoints, exports, the CLI's outputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from imageblocks.data.loaders import DataLoader, Shard
from imageblocks.launcher import launched, local_device


def active() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in the process that prints and writes files."""
    return rank() == 0


def setup() -> bool:
    """Join the launcher's process group when launched and not yet joined; True if distributed."""
    if launched() and dist.is_available() and not dist.is_initialized():
        device = local_device()
        if device is not None:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device is not None else "gloo")
    return active()


def cleanup() -> None:
    """Leave the process group (call once at the end of a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard() -> Shard | None:
    """This process's share of every loader, or None when not distributed; the shuffling seed
    is drawn from torch's generator on rank 0 (so `set_seed` decides it) and shared."""
    if not active():
        return None
    seed = [int(torch.randint(0, 2**31 - 1, ()))]
    dist.broadcast_object_list(seed, src=0)
    return Shard(rank=rank(), world_size=world_size(), seed=seed[0])


def shard_loader(dl: DataLoader) -> DataLoader:
    """`dl`, given this process's shard when distributed (kept when it already has one for this
    process group, so its workers live on); every process must call it for the same loaders."""
    current = dl.shard
    if active():
        if current is None or (current.rank, current.world_size) != (rank(), world_size()):
            dl.shard = shard()
    elif current is not None:
        dl.shard = None
    return dl


def mean(value: float, device: torch.device) -> float:
    """`value` averaged over the processes (itself when not distributed)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def unshard(chunks: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """Rebuild the loader's order from each rank's equal-sized chunk (rank r held items
    r, r+W, r+2W, ... of the padded index list) and drop the padding past `n`."""
    stacked = torch.stack(list(chunks), dim=1)  # (per_rank, world, ...)
    return stacked.reshape(-1, *stacked.shape[2:])[:n]


def gather(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The whole validation set's tensor from every rank's shard, in the loader's order."""
    if t is None or not active():
        return t
    chunks = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(chunks, t.contiguous())
    return unshard(chunks, n)


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (batch-norm running statistics).

    DDP broadcasts them before each training forward, but that forward then updates each copy
    with its own shard's batch: without this, ranks would validate with slightly different
    statistics from the model that rank 0 saves."""
    if not active():
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)
