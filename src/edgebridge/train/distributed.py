"""Small helpers for training under ``torchrun`` (DDP) or alone, shared by the expert (``appf.py``) and the
planner (``planner/trainer.py``) trainers.

``torchrun --nproc-per-node N`` starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the
rendezvous address) in their environment; :func:`init_from_env` joins them into a process group (gloo on
the CPU, nccl on CUDA). Alone, nothing here talks to another process: the rank is 0, the world 1, and every
collective is a no-op.
"""

from __future__ import annotations

import logging
import os
import platform

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def env_world_size() -> int:
    """The world size ``torchrun`` put in the environment (1 when not started by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend_for(device: str) -> str:
    """The process-group backend for a training device: nccl on CUDA, gloo on the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device(device: str) -> str:
    """``device`` for this process: under ``torchrun`` a plain ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU
    per process); an explicit index and the CPU stay as given."""
    dev = torch.device(device)
    if env_world_size() > 1 and dev.type == "cuda" and dev.index is None:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def init_from_env(device: str) -> bool:
    """Join the process group ``torchrun`` describes in the environment (backend by ``device``), unless there
    is none (world size 1) or it is already initialised. True when this call initialised it: the caller
    then destroys it (:func:`destroy`) when done. Once per process: a second group joined after a destroy,
    in the same torchrun process, has been seen to hang in its first collective (gloo)."""
    if env_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend_for(device))
    log.info("process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend_for(device))
    return True


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op alone)."""
    if rank_world()[1] > 1:
        dist.barrier()


def shard_batch(batch: int, world: int) -> int:
    """Samples each of ``world`` ranks draws for a *global* batch of ``batch``: ``batch // world``. A remainder
    is dropped (the global batch is then ``world * (batch // world)``, logged); a batch smaller than the world
    is refused."""
    if batch < world:
        raise ValueError(f"a global batch of {batch} cannot be split over {world} ranks; use a batch >= {world}")
    if batch % world:
        log.warning("global batch %d is not a multiple of the world size %d: each rank draws %d (global %d)",
                    batch, world, batch // world, world * (batch // world))
    return batch // world


def rank_seed(seed: int, rank: int, world: int) -> int:
    """The seed of rank ``rank``'s sampling generators: ``seed`` itself alone (a single-process run draws as it
    always did), else a distinct seed per rank derived from (seed, rank)."""
    if world == 1:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint32)[0])


def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar tensor over the ranks (the value itself alone)."""
    world = rank_world()[1]
    if world == 1:
        return float(value.item())
    v = value.detach().clone().reshape(1).float()
    dist.all_reduce(v)
    return float(v.item()) / world


def gather(obj) -> list:
    """Every rank's ``obj`` (a picklable value), in rank order, on every rank; ``[obj]`` alone."""
    world = rank_world()[1]
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


class _Method(torch.nn.Module):
    """A module whose forward is a method of ``module`` (DDP synchronises gradients through forward)."""

    def __init__(self, module: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.method)(*args, **kwargs)


def ddp_method(module: torch.nn.Module, method: str, device: str) -> torch.nn.Module:
    """``module.<method>`` wrapped in DistributedDataParallel (call it like the method). Parameters a step
    does not use (the cloud encoder in APPF stage 1, an auxiliary head that is off) are allowed."""
    dev = torch.device(device)
    return torch.nn.parallel.DistributedDataParallel(
        _Method(module, method), device_ids=[dev] if dev.type == "cuda" else None, find_unused_parameters=True)


def device_name(device: str) -> str:
    """What the device is: the GPU's name on CUDA, else the CPU model (``/proc/cpuinfo``) and its core count."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                    value = line.split(":", 1)[1].strip()
                    if value and not value.isdigit():
                        model = value
                        break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "cpu"
    return f"{model} ({os.cpu_count()} cores)"
