"""Does fused attention lift the ViT's realized speed-up? (issue 9, the ViT's "other ops")

The authors' ViT computes attention explicitly, ``softmax(q kᵀ/√d) v`` (``ViT(fused_attn=False)``),
so every counter and exporter sees plain matrix products; lorita's ViT runs the same weights through
``torch.nn.functional.scaled_dot_product_attention`` by default (``fused_attn=True``, timm's flag).
Both forms, for the dense model and for low-rank models at ``MacBudget`` {0.5, 0.3, 0.2}: eager,
1 thread, batch 64, all models interleaved in one process (``lorita.compare_latency``, median of
per-round ratios vs the explicit dense model). Random weights, default ViT (dim 256, 6 blocks, 64
tokens). Also one training step (forward + backward, batch 128, the CPU front's ViT: dim 128,
4 blocks), explicit / SDPA, median of interleaved rounds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vit_sdpa.py

Writes ``benchmarks/results/vit_sdpa.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
from pathlib import Path

import torch
import torch.utils.benchmark as tb
from torch import nn

import lorita
from lorita.io import atomic_write_text

vit_module = importlib.import_module("lorita.models.vit")
RESULTS = Path(__file__).parent / "results"


def fused(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``Attention`` block run through SDPA (``fused_attn``; same weights)."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, vit_module.Attention):
            m.fused_attn = True
    return out


def train_step_ratio(rounds: int, batch: int = 128) -> float:
    """Median over interleaved rounds of (explicit step time / SDPA step time), forward + backward."""
    small = {"dim": 128, "num_layers": 4, "heads": 4, "dim_head": 32, "mlp_dim": 256}
    torch.manual_seed(0)
    explicit = vit_module.vit(fused_attn=False, **small)
    sdpa = vit_module.vit(**small)
    sdpa.load_state_dict(explicit.state_dict())
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step(m: nn.Module) -> None:
        m.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(m(x), y).backward()

    timers = {k: tb.Timer("step(m)", globals={"step": step, "m": m}, num_threads=1)
              for k, m in (("explicit", explicit), ("sdpa", sdpa))}
    for t in timers.values():
        t.timeit(2)  # warm-up
    ratios = []
    for _ in range(rounds):
        e = timers["explicit"].timeit(3).median
        f = timers["sdpa"].timeit(3).median
        ratios.append(e / f)
    return float(torch.tensor(ratios).median())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = vit_module.vit(fused_attn=False).eval()
    x = torch.randn(args.batch, 3, 32, 32)
    dense_macs = lorita.count_macs(model, x[:1]).total_macs
    models, macs = {"dense": model, "dense sdpa": fused(model)}, {}
    for b in (0.5, 0.3, 0.2):
        ranks = lorita.select_ranks(model, lorita.MacBudget(b, x[:1]), vit_module.VIT_TARGETS)
        low = lorita.to_low_rank(model, ranks)
        models[f"{b}"], models[f"{b} sdpa"] = low, fused(low)
        macs[f"{b}"] = dense_macs / lorita.count_macs(low, x[:1]).total_macs
    with torch.no_grad():
        diff = max((models[k](x) - models[k + " sdpa"](x)).abs().max().item() for k in ("dense", "0.3"))
    sp = lorita.compare_latency(models, x, runtime="eager", rounds=args.rounds).speedup
    rows = []
    for b, ratio in macs.items():
        explicit, sdpa_ratio = sp[b], sp[f"{b} sdpa"] / sp["dense sdpa"]
        rows.append({"budget": float(b), "mac_ratio": round(ratio, 3), "latency_ratio_explicit": round(explicit, 3),
                     "latency_ratio_sdpa": round(sdpa_ratio, 3), "realized_explicit": round(explicit / ratio, 3),
                     "realized_sdpa": round(sdpa_ratio / ratio, 3)})
    train = train_step_ratio(args.rounds)
    res = {"batch": args.batch, "threads": 1, "torch": torch.__version__, "max_abs_output_diff": diff,
           "dense_sdpa_speedup": round(sp["dense sdpa"], 3), "train_step_speedup_sdpa": round(train, 3),
           "rows": rows}
    atomic_write_text(RESULTS / "vit_sdpa.json", json.dumps(res, indent=1))
    lines = [f"# ViT: explicit attention vs fused SDPA (eager, 1 thread, batch {args.batch})", "",
             f"Same weights; outputs differ by at most {diff:.1e}. Dense with SDPA runs "
             f"{res['dense_sdpa_speedup']:.2f}× as fast as dense explicit; a training step (forward + backward, "
             f"batch 128, dim 128, 4 blocks) {train:.2f}× as fast. Latency ratios are dense/low-rank "
             "within each attention form; one run, ratios only (shared machine).", "",
             "| MAC budget | MAC ratio | latency ratio explicit | latency ratio SDPA | realized explicit | "
             "realized SDPA |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['budget']} | {r['mac_ratio']:.2f} | {r['latency_ratio_explicit']:.2f} | "
                     f"{r['latency_ratio_sdpa']:.2f} | {r['realized_explicit']:.2f} | {r['realized_sdpa']:.2f} |")
    atomic_write_text(RESULTS / "vit_sdpa.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
