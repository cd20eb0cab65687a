"""Training on several processes or machines under torchrun: who is who, and the few
collectives the training loop and the runner need.

Under torchrun (``WORLD_SIZE`` > 1) every process runs the same loop on its share of
each global batch, and rank 0 alone creates the run, writes the store, the report and
the checkpoints. Without torchrun ``Ranks()`` is the one process and every collective is
a no-op, so the loop reads the same either way.

The process group is ``gloo`` for CPU tensors and, where CUDA is available, ``nccl``
for CUDA tensors (one group serves both), with a timeout on every collective: a rank
that dies or hangs ends the others with an error instead of a wait without end.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hlbd.config import DDP_TIMEOUT_SECONDS
from hlbd.errors import HlbdError

log = logging.getLogger(__name__)


class LeaderFailed(HlbdError):
    """Rank 0 stopped before training started (bad input, store error); it said why."""


@dataclass
class Ranks:
    """Where this process is among the training processes: its rank, the world size, the
    hosts (one process, without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    hosts: list[str] = field(default_factory=lambda: [socket.gethostname()])
    _launched: bool = field(default=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that records (store, report, checkpoints, output)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is a process group (more than one process)."""
        return self.world_size > 1

    def device(self, name: str) -> torch.device:
        """The device a config's ``--device`` means here: ``auto``/``cuda`` under torchrun
        is the GPU ``LOCAL_RANK`` picks; an explicit ``cuda:N`` is taken as given."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and self.active:
            name = f"cuda:{self.local_rank}"
        return torch.device(name)

    def backend(self, device: torch.device) -> str | None:
        """The backend that carries the training tensors (None: no process group)."""
        if not self.active:
            return None
        return "nccl" if device.type == "cuda" else "gloo"

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's share of a global batch (may be empty for a short last batch)."""
        return indices[self.rank::self.world_size] if self.active else indices

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all ranks, in place."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    # -- the start: rank 0 prepares, the others wait for what it sends ------------------

    def launch(self, payload: Any) -> None:
        """Rank 0: hand everything the other ranks need to train to them (one broadcast)."""
        if self.active and not self._launched:
            dist.broadcast_object_list([("launch", payload)], src=0)
        self._launched = True

    def await_launch(self) -> Any:
        """Another rank: what rank 0 launched; LeaderFailed if rank 0 failed first."""
        received: list[Any] = [None]
        dist.broadcast_object_list(received, src=0)
        kind, payload = received[0]
        if kind == "failed":
            raise LeaderFailed(payload)
        return payload

    @contextmanager
    def leading(self):
        """Rank 0's preparation: an error before ``launch`` is sent to the other ranks
        (they exit with it) instead of leaving them waiting for a launch."""
        try:
            yield
        except BaseException as exc:
            if self.active and not self._launched:
                self._launched = True
                message = str(exc) or type(exc).__name__
                try:
                    dist.broadcast_object_list([("failed", message)], src=0)
                except (RuntimeError, OSError) as send_error:  # the others are gone already
                    log.debug("could not tell the other ranks: %s", send_error)
            raise

    def close(self) -> None:
        if self.active and dist.is_initialized():
            # The DDP model and its reducer hold the process group; freed here, while the
            # interpreter is whole, not in its teardown, where a gloo thread still running
            # ends the process with SIGABRT ("terminate called without an active
            # exception", seen on rank 1 after a finished run).
            gc.collect()
            dist.destroy_process_group()


def from_environment(timeout_seconds: float = DDP_TIMEOUT_SECONDS) -> Ranks:
    """This process's Ranks: under torchrun (``WORLD_SIZE`` > 1) joins the process group,
    with ``timeout_seconds`` on every collective; else the single process."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE") or 1)
        if world_size <= 1:
            return Ranks()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK") or 0)
        if torch.cuda.is_available():
            # One group for both: gloo carries CPU tensors (the stop vote, objects), NCCL
            # the CUDA ones; NCCL needs this process's GPU set before it first talks.
            if local_rank < torch.cuda.device_count():
                torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds))
    except (KeyError, ValueError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise HlbdError(f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')!r}, but this process "
                        f"could not join the others ({type(exc).__name__}: {reason}); start "
                        "the processes with torchrun") from None
    ranks = Ranks(rank=rank, world_size=world_size, local_rank=local_rank)
    ranks.hosts = ranks.gather(socket.gethostname())
    return ranks


class StopVote:
    """Stopping, agreed by every rank at the same batch.

    A stop request (Ctrl-C, SIGTERM) reaches each process on its own; if one rank left
    the loop while another entered the next collective, that one would wait for ever. So
    each batch every rank puts its request into a sum over all ranks, started without
    waiting and read at the next batch: all ranks stop one batch after the first request
    was seen, at the same batch. Without a process group it is the request itself.
    """

    def __init__(self, ranks: Ranks, requested: Callable[[], bool]):
        self._ranks = ranks
        self._requested = requested
        self._pending: tuple[Any, torch.Tensor] | None = None

    def __call__(self) -> bool:
        if not self._ranks.active:
            return self._requested()
        if self._pending is not None:
            work, votes = self._pending
            self._pending = None
            work.wait()
            if votes.item() > 0:
                return True
        votes = torch.tensor([1 if self._requested() else 0], dtype=torch.int32)
        self._pending = (dist.all_reduce(votes, async_op=True), votes)
        return False

    def close(self) -> None:
        """Wait for the vote in flight (every rank has one after its last batch)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
