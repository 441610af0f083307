"""Data-parallel training with ``torch.distributed`` (DDP), launched by ``torchrun``.

lorita adds no distribution layer of its own: a factorized model is an ordinary ``nn.Module``, so
``torch.nn.parallel.DistributedDataParallel`` trains it as is. These helpers only read the
environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...), start
the process group (``gloo`` on CPU, ``nccl`` on CUDA), wrap/unwrap the model, and check that the
replicas agree before rank 0 saves. Usage (see the README, "Distributed training")::

    torchrun --standalone --nproc_per_node 2 -m lorita train --out runs/ddp ...
    lorita train --nproc 2 --out runs/ddp ...          # the same, relaunched through torchrun

Merge and SVD need the full weights: with DDP every rank holds them; with FSDP gather them first
(``torch.distributed.checkpoint.state_dict.get_model_state_dict(model,
options=StateDictOptions(full_state_dict=True, cpu_offload=True))`` into a plain model on one
rank), then call :func:`lorita.merge` there.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistContext",
    "launched",
    "setup",
    "teardown",
    "wrap",
    "unwrap",
    "check_replicas_equal",
    "all_reduce_mean",
    "launch",
    "relaunch",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``, and whether
    :func:`setup` started the process group (so :func:`teardown` ends only what it began)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "cpu") -> DistContext:
    """Join the process group ``torchrun`` described in the environment (no-op for one process).

    Args:
        device: ``"cpu"`` (backend gloo) or ``"cuda"``/``"cuda:N"`` (backend nccl; each process
            uses ``cuda:LOCAL_RANK``).

    Returns:
        The :class:`DistContext` (rank 0 of 1 on ``device`` when not launched by torchrun).

    Raises:
        ValueError: CUDA requested with fewer visible GPUs than local processes, or a bad
            torchrun environment.
    """
    if not launched():
        return DistContext(device=device)
    try:
        rank = int(os.environ["RANK"])
        world = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"incomplete torchrun environment ({exc}); launch with torchrun") from None
    cuda = device.startswith("cuda")
    if cuda:
        if torch.cuda.device_count() <= local:
            raise ValueError(
                f"process {rank} needs cuda:{local} but {torch.cuda.device_count()} GPU(s) are visible; "
                f"lower `nproc` or use `device='cpu'`"
            )
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    return DistContext(rank, world, local, device, owns)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself.

    DDP broadcasts rank 0's parameters and buffers at construction, so every replica starts equal.
    Optimizers may be built on ``model.parameters()`` (the same tensors).
    """
    if not ctx.distributed:
        return model
    ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / ``DataParallel`` / ``torch.compile`` wrappers (keys without
    ``module.`` or ``_orig_mod.`` prefixes); other modules are returned unchanged."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def check_replicas_equal(model: nn.Module, ctx: DistContext) -> float:
    """Largest difference between this rank's parameters and rank 0's, over all ranks.

    Returns:
        ``max |p − p_rank0|`` (0.0 when not distributed).

    Raises:
        RuntimeError: the replicas differ (a DDP invariant is broken; do not save).
    """
    if not ctx.distributed:
        return 0.0
    params = [p.detach().reshape(-1).double() for p in unwrap(model).parameters()]
    flat = torch.cat(params) if params else torch.zeros(1, dtype=torch.float64, device=ctx.device)
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    worst = float(diff.item())
    if worst != 0.0:
        raise RuntimeError(f"DDP replicas differ by up to {worst:.3g} after training; not saving")
    return worst


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for one process), e.g. until rank 0 has written a file all read."""
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(metrics: dict[str, float], ctx: DistContext, weight_key: str = "n") -> dict[str, float]:
    """Average per-rank metrics weighted by ``metrics[weight_key]`` (summed) over all ranks."""
    if not ctx.distributed:
        return metrics
    keys = [k for k in metrics if k != weight_key]
    n = float(metrics.get(weight_key, 1.0))
    t = torch.tensor([metrics[k] * n for k in keys] + [n], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    total = float(t[-1]) or 1.0
    out = {k: float(t[i]) / total for i, k in enumerate(keys)}
    out[weight_key] = float(t[-1])
    return out


def launch(args: Sequence[str], nproc: int) -> int:
    """Run ``python ARGS`` in ``nproc`` local processes, as ``torchrun --standalone`` does.

    Uses torch's own launcher API (:func:`torch.distributed.launcher.api.elastic_launch`, what
    ``torchrun`` calls), with a c10d rendezvous on a free local port and no restarts; the worker
    processes see ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``.
    ``OMP_NUM_THREADS`` defaults to 1 per process, as with torchrun.

    Args:
        args: arguments after ``python`` (a script path or ``-m module``, then its arguments).
        nproc: processes on this machine (>= 2).

    Returns:
        0 when every process succeeded.

    Raises:
        ValueError: ``nproc`` < 2, or a process failed (its exit code; the process prints its own
            error).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 2:
        raise ValueError(f"`nproc` must be an int >= 2 to launch processes, got {nproc!r}")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
    )
    set_threads = "OMP_NUM_THREADS" not in os.environ
    if set_threads:
        os.environ["OMP_NUM_THREADS"] = "1"
    logger.info("launching %d processes: python %s", nproc, " ".join(args))
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as exc:
        codes = sorted({f.exitcode for f in exc.failures.values()})
        raise ValueError(f"{len(exc.failures)} of {nproc} processes failed (exit codes {codes})") from None
    finally:
        if set_threads:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


def relaunch(argv: Sequence[str], nproc: int) -> int:
    """``lorita ARGV`` in ``nproc`` DDP processes (what ``lorita train --nproc N`` does); see :func:`launch`."""
    return launch(["-m", "lorita", *argv], nproc)
