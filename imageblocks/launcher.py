"""What a launcher such as torchrun told this process through its environment, read only.

Joining the process group is the run's business (`imageblocks.learn.distributed`); the loaders
only need to know which GPU this process was given.
"""

from __future__ import annotations

import os

import torch


def launched() -> bool:
    """True inside a process started by torchrun (or another launcher) with WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device() -> torch.device | None:
    """`cuda:LOCAL_RANK` when launched on a machine with GPUs, else None."""
    if launched() and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return None
