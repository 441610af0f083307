"""Markdown reports for compress / sweep / report / demo outputs (pure string building)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lorita.ranks.search import points

__all__ = ["compress_markdown", "search_markdown", "sweep_markdown", "side_by_side", "pct"]


def pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _row(r: Mapping[str, Any]) -> str:
    return (
        f"| {r['label']} | {pct(r['val_acc'])} | {pct(r.get('test_acc'))} | {r['weight_params']:,} | "
        f"{pct(r['weight_params_frac'], 1)} | {r['params']:,} | {r['macs']:,} | {pct(r['macs_frac'], 1)} |"
    )


_HEAD = (
    "| model | val acc % | test acc % | weight params (targeted) | % of dense | params (all) | MACs/sample | "
    "% MACs |\n|---|---:|---:|---:|---:|---:|---:|---:|"
)


def _latency_lines(report: Mapping[str, Any]) -> list[str]:
    lat = report.get("latency")
    if not lat:
        return []
    return [f"Measured latency ratio (dense time / low-rank time; {lat['runtime']}, {lat['threads']} thread, batch "
            f"{lat['batch']}, median of {lat['rounds']} interleaved rounds): **{lat['speedup']:.2f}**.", ""]


def _split_lines(report: Mapping[str, Any]) -> list[str]:
    dec = report.get("split_decisions")
    if not dec:
        return []
    rows = [f"| {k} | {'split' if d['split'] else 'dense'} | {d['used_rank']} | {d['mac_ratio']:.2f} | "
            f"{'-' if d['latency_ratio'] is None else format(d['latency_ratio'], '.2f')} | {d['reason']} |"
            for k, d in dec.items()]
    return ["## Split decisions (`--split latency`)", "",
            "| layer | form | rank | MAC ratio | latency ratio | reason |", "|---|---|---:|---:|---:|---|", *rows, ""]


def compress_markdown(report: Mapping[str, Any], layer_table: str) -> str:
    """Report of one ``lorita compress`` call."""
    ranks = report["low_rank"]["ranks"] or {}
    lines = [
        f"# lorita compress — `{report['policy']}`",
        "",
        f"Run: `{report['run']}`. Ranks chosen on spectra only; validation and test accuracy reported "
        f"(nothing selected on test). MACs are per sample; FLOPs = 2·MACs.",
        "",
        _HEAD,
        _row(report["dense"]),
        _row(report["low_rank"]),
        "",
        *_latency_lines(report),
        "## Ranks",
        "",
        "| layer | rank |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in ranks.items()],
        "",
        *_split_lines(report),
        "## Low-rank model, per layer",
        "",
        layer_table,
        "",
    ]
    return "\n".join(lines)


def sweep_markdown(result: Mapping[str, Any]) -> str:
    """Table of one sweep (dense row first)."""
    lines = [
        f"# Sweep `{result['policy']}` — depth {result['depth']}, weight decay {result['weight_decay']:g}",
        "",
        f"Run: `{result['run']}`. MACs per sample. Test accuracy is reported, never used for selection."
        + (f" Ranks in multiples of {result['rank_multiple']}." if result.get("rank_multiple") else "")
        + (f" Every layer capped at {result['layer_cap']:g} of its own cost." if result.get("layer_cap") else ""),
        "",
        _HEAD,
        _row(result["dense"]),
        *[_row(r) for r in result["points"]],
        "",
    ]
    lat = [r for r in result["points"] if r.get("latency_ratio") is not None]
    if lat:  # `sweep --latency`
        lines += ["Measured latency ratio (dense time / point's time; eager, 1 thread, interleaved rounds):", "",
                  "| point | latency ratio |", "|---|---:|",
                  *[f"| {r['label']} | {r['latency_ratio']:.2f} |" for r in lat], ""]
    return "\n".join(lines)


def side_by_side(sweeps: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> str:
    """One row per sweep point (matched by ``point``): test accuracy and its change vs dense."""
    head = "| budget | " + " | ".join(f"{lb} test % (Δ vs dense) | {lb} weight params" for lb in labels) + " |"
    sep = "|---:|" + "---:|---:|" * len(labels)
    pts = sorted({r["point"] for s in sweeps for r in s["points"]})
    lines = [head, sep]
    dense = "| dense | " + " | ".join(
        f"{pct(s['dense']['test_acc'])} | {s['dense']['weight_params']:,}" for s in sweeps
    ) + " |"
    lines.append(dense)
    for p in pts:
        cells = []
        for s in sweeps:
            r = next((r for r in s["points"] if r["point"] == p), None)
            if r is None:
                cells.append("– | –")
                continue
            change = 100 * (r["test_acc"] - s["dense"]["test_acc"])
            cells.append(f"{pct(r['test_acc'])} ({change:+.2f}) | {r['weight_params']:,}")
        lines.append(f"| {p:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def search_markdown(report: dict[str, Any]) -> str:
    """Markdown of a greedy-search ``lorita compress`` report (the ``report.json`` dict)."""
    rows = [report["dense"], report["low_rank"]] + ([report["int8"]] if report.get("int8") else [])
    s = report["search"]
    lines = [
        f"# lorita compress — greedy rank search, tolerance {points(s['config']['tolerance'])}",
        "",
        f"Run: `{report['run']}`. Ranks chosen on the validation split ({report['val_samples']} images); "
        f"test accuracy reported once, never used. MACs per sample (FLOPs = 2·MACs). Bytes: files on disk.",
        "",
        "| model | val acc % | test acc % | params | MACs/sample | % MACs | bytes on disk |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {pct(r['val_acc'])} | {pct(r['test_acc'])} | {r['params']:,} | "
            f"{r['macs']:,} | {pct(r['macs_frac'], 1)} | {r.get('bytes', 0):,} |"
        )
    lines += [
        "",
        f"Search: reference val acc {pct(s['reference']['acc'])}%, final {pct(s['final']['acc'])}%; "
        f"{s['evaluations']} evaluations, {s['finetunes']} fine-tunes, {s['wall_seconds']:.1f} s. "
        f"Stopped: {s['stop_reason']}.",
        "",
        "| layer | rank | form |",
        "|---|---:|---|",
        *[f"| {k} | {v} | {s['forms'][k]} |" for k, v in s["ranks"].items()],
        "",
        "Trace: `search_trace.json`.",
        "",
    ]
    return "\n".join(lines)
