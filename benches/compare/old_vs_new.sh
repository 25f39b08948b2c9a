#!/usr/bin/env bash
# Two builds of compare_vae.rs side by side (e.g. before and after a change), alternating
# the order every round. Usage:
#   benches/compare/old_vs_new.sh OLD_BINARY NEW_BINARY UNPACKED_MNIST_DIR [ROUNDS] > runs.jsonl
# Build each side with `cargo build --release --example compare_vae` in its own checkout;
# the MNIST directory holds the uncompressed IDX files (gunzip -c the .gz files).
set -euo pipefail
old=$1 new=$2 data=$3 rounds=${4:-11}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2} CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-2}
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
  for mode in train nll; do
    for b in $order; do
      bin=$old; [ "$b" = new ] && bin=$new
      load=$(cut -d' ' -f1 /proc/loadavg)
      line=$("$bin" "$mode" --data "$data" 2>/dev/null | tail -1)
      echo "{\"round\":$r,\"build\":\"$b\",\"load\":$load,\"result\":$line}"
    done
  done
done
