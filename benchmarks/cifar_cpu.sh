#!/usr/bin/env bash
# Short, honest CPU run of LoRITa on real CIFAR-10 (issue 5, §5): ResNet-20, depth 1 vs depth 3,
# the same recipe for both, two weight decays, then a MAC-budget sweep of every run and a report.
#
# Budget: 15 epochs per run (the paper trains 300), 4 runs at 1 thread each, two at a time, on a
# 2-core machine shared with other jobs. Accuracies are therefore far below converged ResNet-20
# numbers; the comparison is side by side on the same (JPEG-lossy) CIFAR-10 copy.
#
# Usage (from the repo root, after `make setup`):
#   nohup bash benchmarks/cifar_cpu.sh > runs/cifar_cpu/log.txt 2>&1 &
# Env: DATA (CIFAR-10 folder), OUT (run folders), EPOCHS, WDS, SNAP (a frozen copy of src/ to run).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar-10-batches-bin}
OUT=${OUT:-runs/cifar_cpu}
EPOCHS=${EPOCHS:-15}
WDS=${WDS:-"2e-3 5e-4"}
POINTS=${POINTS:-"0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.6,0.7,0.8"}
mkdir -p "$OUT"
# Run a frozen copy of the code so edits to the working tree cannot change a running experiment.
SNAP=${SNAP:-$OUT/src-snapshot}
if [ ! -d "$SNAP/lorita" ]; then cp -r src "$SNAP"; fi
PY=".venv/bin/python"
lorita() { PYTHONPATH="$SNAP" "$PY" -m lorita --no-progress "$@"; }
lorita --version
PYTHONPATH="$SNAP" "$PY" -c "import lorita, torch; print(lorita.__file__, torch.__version__, torch.get_num_threads())"

RECIPE=(--model resnet20 --dataset cifar10 --data-dir "$DATA" --epochs "$EPOCHS" --batch-size 128
        --optimizer sgd --lr 0.05 --momentum 0.9 --scheduler cosine --warmup-epochs 1
        --label-smoothing 0.1 --augment --seed 0 --threads 1)
for wd in $WDS; do
  pids=()
  for depth in 1 3; do
    run="$OUT/wd${wd}-depth${depth}"
    # --resume: re-running this script continues an interrupted run from its last epoch.
    lorita train "${RECIPE[@]}" --depth "$depth" --weight-decay "$wd" --out "$run" --resume \
      > "$run.train.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for depth in 1 3; do
    run="$OUT/wd${wd}-depth${depth}"
    echo "== $run: $(cat "$run/summary.json" | tr -d '\n ')"
    OMP_NUM_THREADS=2 lorita sweep "$run" --policy macs --points "$POINTS" > "$run.sweep.log" 2>&1
  done
done
for wd in $WDS; do
  OMP_NUM_THREADS=2 lorita report "$OUT/wd${wd}-depth1" "$OUT/wd${wd}-depth3" --labels "depth 1" "depth 3" \
    --out "$OUT/report-wd${wd}" > "$OUT/report-wd${wd}.log" 2>&1
done
echo "done: $(date -u +%FT%TZ)"
