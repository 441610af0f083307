"""Worker for test_distributed.py, started in 2 processes by ``lorita.distributed.launch`` (torch's
torchrun launcher): ``python tests/ddp_worker.py OUT DATA``.

1. A factorized conv net trains 4 steps under DDP (gloo, CPU) on disjoint shards; each rank writes
   its weights; rank 0 merges and saves (also saving the DDP wrapper itself).
2. ``lorita train`` runs in the same processes (the CLI's DDP path: sharded loader, rank-0 writes,
   replica check), as ``lorita train --nproc 2`` would start it; then once more with
   ``--factorize-at 1`` (both phases in one process group).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import lorita
from deploy_fixtures import train_args
from lorita import distributed
from lorita.cli import main as cli_main
from lorita.data import TensorLoader


def plain() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def main(out: Path, data: Path) -> None:
    ctx = distributed.setup("cpu")
    assert ctx.world_size == 2, ctx
    torch.manual_seed(100 + ctx.rank)  # different init per rank: DDP must broadcast rank 0's
    model = lorita.factorize(plain(), depth=3)
    ddp = distributed.wrap(model, ctx)
    opt = torch.optim.SGD(lorita.param_groups(model, weight_decay=1e-3), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 6, 6, generator=g), torch.randint(0, 5, (64,), generator=g)
    loader = TensorLoader(x, y, batch_size=8, shuffle=True, seed=0, rank=ctx.rank, world_size=ctx.world_size)
    seen = 0
    for xb, yb in loader:  # 4 steps of 8 samples per rank
        seen += len(yb)
        loss = F.cross_entropy(ddp(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    distributed.check_replicas_equal(ddp, ctx)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"rank{ctx.rank}.safetensors"), metadata={"n": str(seen)})
    if ctx.is_main:
        lorita.save(lorita.merge(distributed.unwrap(ddp)), out / "merged.safetensors")
        lorita.save(ddp, out / "factorized.safetensors")  # the DDP wrapper is unwrapped on save
    dist.barrier()
    rc = cli_main(train_args(data, out / "cli_run"))  # joins the running group, leaves it running
    assert rc == 0
    # Factorize late under DDP: both phases in the same group (rank 0 writes plain/ before all read it).
    assert cli_main(train_args(data, out / "cli_late", "--epochs", "2", "--factorize-at", "1")) == 0
    distributed.teardown(ctx)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
