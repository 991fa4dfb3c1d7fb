"""The process group of one job, and the few collectives the trainer needs.

One entry works under every launcher:

- one process (`python -m trainer.train`): no RANK/WORLD_SIZE in the environment,
  so a world of 1 is created (MASTER_ADDR=127.0.0.1, MASTER_PORT a free port);
- `torchrun` / `deepspeed` launchers: they set RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR and MASTER_PORT, and every process joins the group;
- `srun` (SLURM): RANK/WORLD_SIZE/LOCAL_RANK come from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and
  the master from the job's first node (`from_slurm`);
- a Ray Train worker (or any caller that already made a group): `setup` sees
  `torch.distributed.is_initialized()` and uses that group as is.

Backend: nccl when CUDA is present, gloo otherwise (or as configured).
No DeepSpeed here: `trainer.engine` wraps this group for DeepSpeed.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import random
import socket
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainer.errors import UserError, on_every_rank

log = logging.getLogger(__name__)


class ConfigMismatchError(UserError, RuntimeError):
    """Ranks of one job resolved different configs (different files, overrides or code)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_backend(backend: str = "auto") -> str:
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def setup(backend: str = "auto", timeout_minutes: float = 60.0) -> bool:
    """Join (or create) the default process group; returns True when this call created it.

    A group created here lives until the process exits (DeepSpeed caches groups made from
    it, so a second job in the same process reuses it rather than a new one).

    Without launcher variables this is a world of one process: RANK=0, WORLD_SIZE=1,
    LOCAL_RANK=0, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT are set (unless given).
    """
    if dist.is_initialized():
        return False
    from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(key, value)
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(_free_port())
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun, "
                           f"the deepspeed launcher, srun, or from a Ray Train worker")
    backend = resolve_backend(backend)
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes),
                            rank=int(os.environ["RANK"]), world_size=world)
    atexit.register(_destroy_at_exit)
    log.info("process group: %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return True


def from_slurm() -> bool:
    """Under `srun` (SLURM_PROCID and SLURM_NTASKS set, no launcher variables): RANK, WORLD_SIZE and
    LOCAL_RANK from SLURM's, MASTER_ADDR the job's first node (or as exported), MASTER_PORT derived
    from the job id (or as exported), so every task of one `srun` joins one group. Returns whether it did.
    """
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return False
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = first_host(os.environ.get("SLURM_JOB_NODELIST", os.environ.get("SLURM_NODELIST",
                                                                                                   "127.0.0.1")))
    os.environ.setdefault("MASTER_PORT", str(15000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
    return True


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[03-05,07],cpu1` -> `gpu03` (`scontrol show hostnames` order)."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[:nodelist.index("]") + 1]
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]


def _destroy_at_exit() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. to fill a cache), then the other ranks."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (picklable objects)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float | torch.Tensor]) -> list[float]:
    """Element-wise sum of a few floats or 0-dim tensors over all ranks (fp64), read back to the host once.

    Tensors stay on the device until the sum is read (floats are filled in there, not copied), so the
    result's `tolist` is the only point that waits for the device.
    """
    dev = device()
    if any(torch.is_tensor(v) for v in values):
        t = torch.stack([v.to(dev, torch.float64).reshape(()) if torch.is_tensor(v)
                         else torch.full((), v, dtype=torch.float64, device=dev) for v in values])
    else:
        t = torch.tensor(values, dtype=torch.float64, device=dev)
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_config(text: str) -> str:
    """All ranks must have resolved the same config; raise `ConfigMismatchError` naming the odd ranks."""
    mine = config_hash(text)
    hashes = all_gather_object(mine)
    if len(set(hashes)) > 1:
        reference = hashes[0]
        odd = [r for r, h in enumerate(hashes) if h != reference]
        raise on_every_rank(ConfigMismatchError(   # the same message on every rank: rank 0 prints it
            f"ranks disagree on the resolved job config: rank(s) {odd} differ from rank 0 "
            f"(hashes {', '.join(f'{r}:{h[:12]}' for r, h in enumerate(hashes))}); "
            f"launch every rank with the same job file and overrides"))
    return mine


def micro_batch_seed(seed: int, index: int) -> int:
    """A 63-bit seed for global micro-batch `index` of a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed % 2**63, index]).generate_state(1, dtype=np.uint64)[0]) >> 1


def rng_state() -> dict[str, Any]:
    """Every RNG this process uses (python, numpy, torch CPU, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
