"""Data parallel on an existing launcher (``torchrun``, ``accelerate launch``, or a scheduler that sets the
same variables): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.

Each rank takes items ``rank, rank + world, ...`` (a deterministic shard of the benchmark's fixed order),
writes its own record files, and waits at a barrier (a gloo process group: CPU only, so it works next to any
GPU backend and across nodes); rank 0 then merges and writes the outputs. Multi-node: the same, with the output
folder on a file system every node sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["World", "world_from_env", "shard"]


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    _group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self) -> None:
        """Join the launcher's process group (gloo) when there is more than one process."""
        if self.size <= 1:
            return
        import datetime

        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=self.rank, world_size=self.size,
                                    timeout=datetime.timedelta(hours=float(os.environ.get("KVSMOOTH_RUN_TIMEOUT_H", 24))))
            self._group = True

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def stop(self) -> None:
        if self._group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._group = False


def world_from_env(env=None) -> World:
    env = os.environ if env is None else env
    rank, size = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    if not 0 <= rank < max(size, 1):
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={size}")
    return World(rank, size, int(env.get("LOCAL_RANK", 0)))


def shard(items: list, rank: int, size: int) -> list:
    """Items ``rank::size``: every item in exactly one shard, the same split for the same world size."""
    return items[rank::size]
