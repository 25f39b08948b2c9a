#!/usr/bin/env python3
"""How sure a ratio of medians over alternating rounds is: a bootstrap over the rounds.

`ratio_interval(a, b)` resamples the rounds with replacement (each round's pair of runs
stays together, so a slow spell that hit both sides of a round stays paired) and returns
the central 95 % of the resampled median(b) / median(a). Seeded: the same runs give the
same interval. It treats rounds as exchangeable; a slow spell that lasts several rounds
makes neighbouring rounds alike, and then the interval is narrower than the truth.

As a program it reads `NAME RATE` lines (benches/compare/ab.sh's runs, alternating A and
B) and prints each side's runs and median, the ratio of medians B / A with its interval,
the median of the per-round ratios and in how many rounds B was faster.
"""
import random
import statistics
import sys


def ratio_interval(a, b, resamples=10_000, level=0.95, seed=0):
    """Bootstrap interval of median(b) / median(a) over paired rounds a[i], b[i]."""
    if len(a) != len(b) or not a:
        raise ValueError("need the same, non-zero number of runs on both sides")
    rng = random.Random(seed)
    n = len(a)
    ratios = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(b[i] for i in idx) / statistics.median(a[i] for i in idx))
    ratios.sort()
    tail = (1.0 - level) / 2.0
    return ratios[int(tail * resamples)], ratios[int((1.0 - tail) * resamples) - 1]


def summary(a, b):
    """What both scripts print for paired rounds a[i], b[i]: median(b) / median(a), its
    bootstrap interval, the median of the per-round ratios b[i] / a[i], and in how many
    rounds b was faster."""
    per_round = [y / x for x, y in zip(a, b)]
    return (statistics.median(b) / statistics.median(a), ratio_interval(a, b),
            statistics.median(per_round), sum(r > 1 for r in per_round))


def main():
    runs = {}
    for line in sys.stdin:
        name, rate = line.split()
        runs.setdefault(name, []).append(float(rate))
    names = list(runs)
    if len(names) != 2:
        sys.exit(f"expected runs of two binaries, got {len(names)}")
    for name in names:
        print(name, " ".join(f"{r:.0f}" for r in runs[name]), "median", statistics.median(runs[name]))
    a, b = (runs[n] for n in names)
    ratio, (low, high), median_ratio, b_faster = summary(a, b)
    print(f"ratio of medians {names[1]} / {names[0]}: {ratio:.3f} "
          f"(95 % bootstrap interval {low:.3f}-{high:.3f}); median ratio {median_ratio:.3f}; "
          f"B faster in {b_faster} of {len(a)} rounds")


if __name__ == "__main__":
    main()
