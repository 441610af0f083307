"""A deterministic stand-in for lorita's timer: seconds = (MACs + OVERHEAD per weight op) · 1e-9.

Each Linear/Conv leaf costs its MACs on the given input plus a fixed OVERHEAD (the per-op cost
that makes thin splits slower than MACs say). ``misaligned`` multiplies the cost of a leaf whose
channel counts are not multiples of 8 (SIMD-unfriendly widths), for ``multiple=`` tests.
"""

from __future__ import annotations

import torch
from torch import nn

OVERHEAD = 2000
SECONDS_PER_MAC = 1e-9


def leaf_cost(module: nn.Module, inputs: tuple, misaligned: float = 1.0) -> int:
    """Cost units of ``module(*inputs)``: Σ over Linear/Conv leaves of (MACs + OVERHEAD)·penalty."""
    total = []

    def hook(mod, args, out):
        macs = out.numel() * mod.weight[0].numel()
        chans = (mod.weight.shape[0], mod.weight.shape[1])
        pen = misaligned if any(c % 8 for c in chans) else 1.0
        total.append((macs + OVERHEAD) * pen)

    leaves = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return sum(total)


class FakeTimer:
    """``timer(fn, module, inputs) -> [seconds]``; records each call (module type, input shape,
    torch threads, whether the first weight is channels_last) and can run ``fn`` to check it works."""

    def __init__(self, misaligned: float = 1.0, run: bool = False):
        self.misaligned = misaligned
        self.run = run
        self.calls = []
        self.modules = []

    def __call__(self, fn, module, inputs):
        if self.run:
            fn()
        w = next((p for p in module.parameters() if p.dim() == 4), None)
        cl = bool(w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
        self.modules.append(module)
        self.calls.append((type(module).__name__, tuple(inputs[0].shape), torch.get_num_threads(), cl))
        return [leaf_cost(module, inputs, self.misaligned) * SECONDS_PER_MAC]
