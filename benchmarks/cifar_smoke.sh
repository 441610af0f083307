#!/usr/bin/env bash
# Every CIFAR-10 reference model through the whole CLI on *real* CIFAR-10 images, on CPU:
# train (depth 3, 1 epoch) -> compress (macs:0.5) -> sweep (macs) -> report -> export (ONNX).
#
# A pipeline check, not an accuracy experiment: to fit a 2-core CPU it reads the first
# $N records of every official binary file (a real subset: 5*N training images, of which
# N are the validation split, and N test images; `--no-verify` accepts the short files), and
# trains one epoch. Accuracies are near chance and mean nothing; what is checked is that
# each model trains, merges, compresses, sweeps, reports and exports on the real data layout.
#
# Usage (repo root, after `make setup`):  bash benchmarks/cifar_smoke.sh
# Env: DATA (the cifar-10-batches-bin folder), N (records per file, default 500), MODELS, THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar-10-batches-bin}
N=${N:-500}
MODELS=${MODELS:-"resnet20 resnet18 vgg16 vit"}
THREADS=${THREADS:-1}
OUT=${OUT:-runs/cifar_smoke}
RESULTS=${RESULTS:-benchmarks/results/cifar_smoke}
mkdir -p "$OUT/data" "$RESULTS"
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
  head -c $((N * 3073)) "$DATA/$f.bin" > "$OUT/data/$f.bin"     # 1 label byte + 3072 pixel bytes
done
cp "$DATA/batches.meta.txt" "$OUT/data/"
L=(.venv/bin/lorita --no-progress)
for m in $MODELS; do
  run="$OUT/$m-d3"
  rm -rf "$run"
  start=$(date +%s)
  "${L[@]}" train --model "$m" --recipe none --dataset cifar10 --data-dir "$OUT/data" --no-verify --val-size "$N" \
      --depth 3 --epochs 1 --batch-size 64 --lr 0.02 --weight-decay 5e-4 --augment --seed 0 \
      --threads "$THREADS" --out "$run"
  "${L[@]}" compress "$run" --policy macs:0.5 --threads "$THREADS"
  "${L[@]}" sweep "$run" --policy macs --points 0.3,0.6 --threads "$THREADS"
  "${L[@]}" report "$run" --out "$run/report" --threads "$THREADS"
  "${L[@]}" export "$run/compressed" --onnx "$run/low_rank.onnx"
  echo "$m $(( $(date +%s) - start ))" >> "$OUT/wall.txt"
done
.venv/bin/python - "$OUT" "$RESULTS" "$N" $MODELS <<'PY'
import json, sys
from pathlib import Path
out, res, n, models = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
wall = dict(line.split() for line in (out / "wall.txt").read_text().splitlines())
rows = []
for m in models:
    rep = json.loads((out / f"{m}-d3/compressed/report.json").read_text())
    d, lr = rep["dense"], rep["low_rank"]
    rows.append({"model": m, "dense_params": d["params"], "dense_macs": d["macs"],
                 "low_rank_params": lr["params"], "low_rank_macs": lr["macs"],
                 "val_acc_dense": d["val_acc"], "val_acc_low_rank": lr["val_acc"],
                 "onnx_bytes": (out / f"{m}-d3/low_rank.onnx").stat().st_size,
                 "wall_seconds": int(wall[m])})
(res / "summary.json").write_text(json.dumps({"records_per_file": n, "rows": rows}, indent=2) + "\n")
lines = [f"# CIFAR-10 pipeline smoke run: every model through the CLI on real images",
         "", f"First {n} records of each official binary file ({4 * n} train, {n} val, {n} test images), "
         "depth 3, 1 epoch, `compress --policy macs:0.5`, `sweep --points 0.3,0.6`, `report`, `export --onnx`. "
         "Accuracies after one epoch on a subset are near chance and are not results; MACs per image "
         "(FLOPs = 2·MACs). Command: `bash benchmarks/cifar_smoke.sh`.", "",
         "| model | dense params | dense MACs | low-rank params | low-rank MACs | ONNX bytes | wall s (1 thread) |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    lines.append(f"| {r['model']} | {r['dense_params']:,} | {r['dense_macs']:,} | {r['low_rank_params']:,} | "
                 f"{r['low_rank_macs']:,} | {r['onnx_bytes']:,} | {r['wall_seconds']} |")
(res / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
