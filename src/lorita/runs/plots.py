"""Figures: singular-value spectra, accuracy vs params/MACs kept, training curves.

matplotlib is imported lazily (Agg backend) so importing lorita never needs a display. Every
figure is written atomically (temp file, then rename) as PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["plot_sweeps", "plot_spectra", "plot_curves"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    from lorita._files import atomic_path

    path = Path(path)
    try:
        with atomic_path(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def plot_sweeps(
    results: Sequence[Mapping[str, Any]],
    path: str | Path,
    labels: Sequence[str] | None = None,
    x: str = "weight_params_frac",
    y: str = "test_acc",
    title: str | None = None,
) -> Path:
    """Accuracy (``y``, in %) vs fraction kept (``x``, log scale) for one or more sweeps.

    Each result is a ``sweep.json`` dict (``points`` rows and a ``dense`` row); the dense
    accuracy of each run is drawn as a dotted line of the same colour.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, res in enumerate(results):
        label = labels[i] if labels else f"{res.get('policy', 'run')} depth {res.get('depth', '?')}"
        pts = sorted((p for p in res["points"] if p.get(y) is not None), key=lambda p: p[x])
        line = ax.plot([p[x] * 100 for p in pts], [p[y] * 100 for p in pts], "o-", ms=3.5, label=label)[0]
        dense = res.get("dense", {}).get(y)
        if dense is not None:
            ax.axhline(dense * 100, color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(fmt)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel({"weight_params_frac": "weight params kept (% of dense, targeted layers)",
                   "params_frac": "params kept (% of dense model)",
                   "macs_frac": "MACs kept (% of dense model)"}.get(x, x))
    ax.set_ylabel(f"{'test' if y == 'test_acc' else 'validation'} accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Accuracy vs size (dotted: uncompressed)")
    return _save(fig, path)


def plot_spectra(
    spectra: Mapping[str, Mapping[str, Tensor]], path: str | Path, normalize: bool = True
) -> Path:
    """Singular values per layer (log scale), runs overlaid.

    Args:
        spectra: ``{run label: {layer name: S}}``; layers are drawn in the first run's order.
        normalize: plot ``S_i / S_1``.
    """
    plt = _plt()
    labels = list(spectra)
    layers = list(next(iter(spectra.values())))
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for k, layer in enumerate(layers):
        ax = axes[k // cols][k % cols]
        for label in labels:
            S = spectra[label].get(layer)
            if S is None:
                continue
            s = S.double()
            if normalize and float(s[0]) > 0:
                s = s / s[0]
            ax.semilogy(range(1, len(s) + 1), s.clamp_min(1e-12).numpy(), label=label, lw=1.2)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("index i", fontsize=8)
        ax.set_ylabel("σ_i / σ_1" if normalize else "σ_i", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=7)
    for k in range(len(layers), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Singular-value spectra of the merged weights")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)


def plot_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Validation accuracy and training loss per epoch for several runs."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        a1.plot(ep, [h["val_acc"] * 100 for h in hist], label=label)
        a2.semilogy(ep, [h["train_loss"] for h in hist], label=label)
    a1.set_xlabel("epoch")
    a1.set_ylabel("validation accuracy (%)")
    a2.set_xlabel("epoch")
    a2.set_ylabel("training loss")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    return _save(fig, path)
