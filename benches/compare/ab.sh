#!/bin/bash
# Two builds of compare_vae against each other, alternating round by round, so both see
# the same background load; prints each run's images/s, the medians, B/A with a bootstrap
# interval over the rounds, and in how many rounds B was faster (rounds.py).
#
#   benches/compare/ab.sh ROUNDS BINARY_A BINARY_B -- compare_vae arguments…
#   e.g. benches/compare/ab.sh 5 /tmp/cv_before /tmp/cv_after -- conv --size 64 --steps 10
#
# Build the two binaries first (e.g. `cargo build --release --example compare_vae` on each
# side of a change, copying target/release/examples/compare_vae away in between).
set -euo pipefail
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
  echo "usage: $0 ROUNDS BINARY_A BINARY_B -- compare_vae arguments…" >&2
  exit 2
fi
rounds=$1; a=$2; b=$3; shift 4
for _ in $(seq "$rounds"); do
  for binary in "$a" "$b"; do
    rate=$("$binary" "$@" | grep -o '"images_per_sec":[0-9.]*' | cut -d: -f2)
    echo "$binary $rate"
  done
done | python3 "$(dirname "$0")/rounds.py"
