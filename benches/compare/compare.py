#!/usr/bin/env python3
"""Side-by-side speed of candle-vae and PyTorch on the same machine, run alternately.

For each workload the candle binary (compare_vae, built here) and the PyTorch peer run
one after the other, `--runs` times, swapping who goes first every round, so both see
the same background load. Prints every run, then the median images/s of each, the
ratio of the medians (candle / PyTorch) with a 95 % bootstrap interval over the rounds
(rounds.py), and the median of the per-round ratios, with the 1-minute load average seen
before each run. Not part of CI.

Workloads (pick with --what, default all):
  train   one epoch of MNIST, the pytorch/examples VAE (peer_torch_vae.py)
  nll     importance-sampled log p(x), K = 1000, 1,000 test images (peer_torch_extra.py)
  nll_blocked  the same, PyTorch also in candle-vae's blocks of 26 images per pass
  conv28  40 steps of a conv VAE on MNIST, batch 128 (peer_torch_extra.py)
  conv64  20 steps of a conv VAE on 3x64x64 noise, batch 64 (peer_torch_extra.py)

Usage (from the repository root):
  python3 benches/compare/compare.py --data /work/shared/datasets/mnist --runs 5
Options: --torch-python PATH (default $HOME/torch-venv/bin/python), --peer PATH
(default ../shared/bench/peer_torch_vae.py beside the checkout), --threads 2 (both sides: torch.set_num_threads and
RAYON_NUM_THREADS for candle), --candle-env 'K=V …'
(extra environment for the candle runs only), --env 'K=V …' (for both sides, e.g.
glibc's malloc tunables), --what train,nll, --no-build,
--device cuda (both sides on the GPU: the train peer is then peer_torch_extra.py's, since
peer_torch_vae.py has no device flag), --binary PATH (a prebuilt compare_vae, e.g. the one
.ci/gpu-bundle built with the cuda feature; implies --no-build).
"""
import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import rounds

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def unpack_mnist(src, dst):
    """The candle side reads uncompressed IDX; both sides get the same directory."""
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        out = os.path.join(dst, name)
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), out)
        else:
            with gzip.open(os.path.join(src, name + ".gz"), "rb") as f, open(out, "wb") as g:
                shutil.copyfileobj(f, g)


def default_peer():
    """../shared/bench/peer_torch_vae.py from the main checkout (or a worktree beside it)."""
    for up in (("..",), ("..", "..")):
        path = os.path.join(ROOT, *up, "shared", "bench", "peer_torch_vae.py")
        if os.path.exists(path):
            return os.path.normpath(path)
    return "peer_torch_vae.py"


def pairs(text):
    """'K=V K2=V2 …' as a dict."""
    return dict(pair.split("=", 1) for pair in text.split())


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run(cmd, env=None):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            rec = json.loads(line)
            rec["wall_s"] = round(wall, 2)
            return rec
    sys.exit(f"no JSON line from {' '.join(cmd)}:\n{out.stdout}")


def images_per_sec(rec):
    if "images_per_sec" in rec:
        return rec["images_per_sec"]
    return rec["epochs"][-1]["train_images_per_sec"]  # peer_torch_vae.py


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="MNIST directory (IDX, .gz or not)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--what", default="train,nll,conv28,conv64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch-python", default=os.path.expanduser("~/torch-venv/bin/python"))
    ap.add_argument("--peer", default=default_peer())
    ap.add_argument("--candle-env", default="", help="extra KEY=VALUE pairs for the candle runs")
    ap.add_argument("--env", action="append", default=[],
                    help="extra KEY=VALUE pairs for both sides (e.g. GLIBC_TUNABLES=...); "
                         "repeat it or separate pairs by spaces")
    ap.add_argument("--candle-args", default="", help="extra flags for compare_vae (e.g. --plain)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--binary", default="")
    args = ap.parse_args()

    if not args.no_build and not args.binary:
        subprocess.run(["cargo", "build", "--release", "--example", "compare_vae"], cwd=ROOT, check=True)
    binary = args.binary or os.path.join(ROOT, "target", "release", "examples", "compare_vae")
    data = tempfile.mkdtemp(prefix="mnist-idx-")
    unpack_mnist(args.data, data)
    env = dict(os.environ)
    # The same thread count on both sides: torch.set_num_threads, and candle's barrier pool
    # (the fused kernels and candle's element-wise ops) and rayon's (candle's own matmul).
    env["CANDLE_NUM_THREADS"] = env["RAYON_NUM_THREADS"] = str(args.threads)
    shared = pairs(" ".join(args.env))
    env.update(shared)
    env.update(pairs(args.candle_env))
    torch_env = {**os.environ, **shared}
    extra = args.candle_args.split() + ["--device", args.device]
    torch_threads = ["--threads", str(args.threads), "--device", args.device]
    extra_peer = os.path.join(HERE, "peer_torch_extra.py")
    if args.device == "cpu":
        train_peer = [args.torch_python, args.peer, "--data", data, "--epochs", "1", "--threads",
                      str(args.threads)]
    else:
        train_peer = [args.torch_python, extra_peer, "train", "--data", data] + torch_threads
    workloads = {
        "train": ([binary, "train", "--data", data], train_peer),
        "nll": ([binary, "nll", "--data", data],
                [args.torch_python, os.path.join(HERE, "peer_torch_extra.py"), "nll", "--data", data]
                + torch_threads),
        # The same K and chunks, PyTorch in candle-vae's blocks of images instead of all at
        # once: log_likelihood's 2^21 likelihood values per pass, at 784 per sample and
        # compare_vae's chunk of 100 samples, 26 images.
        "nll_blocked": ([binary, "nll", "--data", data],
                        [args.torch_python, os.path.join(HERE, "peer_torch_extra.py"), "nll", "--data",
                         data, "--block-images", str((1 << 21) // (784 * 100))] + torch_threads),
        "conv28": ([binary, "conv", "--data", data, "--size", "28", "--steps", "40"],
                   [args.torch_python, os.path.join(HERE, "peer_torch_extra.py"), "conv", "--data", data,
                    "--size", "28", "--steps", "40"] + torch_threads),
        "conv64": ([binary, "conv", "--size", "64", "--steps", "20"],
                   [args.torch_python, os.path.join(HERE, "peer_torch_extra.py"), "conv", "--size", "64",
                    "--steps", "20"] + torch_threads),
    }
    print(f"device {args.device}; env (both sides): {' '.join(args.env) or '(none)'}; "
          f"candle env: {args.candle_env or '(none)'}; candle args: {args.candle_args or '(none)'}; "
          f"torch threads {args.threads}; runs {args.runs}; cores {os.cpu_count()}")
    summary = []
    for what in args.what.split(","):
        ours_cmd, torch_cmd = workloads[what]
        ours_cmd = ours_cmd + extra
        ours, theirs = [], []
        for r in range(args.runs):
            order = [("candle", ours_cmd, env), ("torch", torch_cmd, torch_env)]
            if r % 2:
                order.reverse()
            got = {}
            for name, cmd, e in order:
                load = loadavg()
                rec = run(cmd, e)
                got[name] = images_per_sec(rec)
                print(f"{what:7s} round {r + 1} {name:6s} {got[name]:10.1f} images/s  "
                      f"(wall {rec['wall_s']:.1f} s, load before {load:.2f})", flush=True)
            ours.append(got["candle"])
            theirs.append(got["torch"])
        ratio, interval, median_ratio, _ = rounds.summary(theirs, ours)
        summary.append((what, statistics.median(ours), statistics.median(theirs), ratio, interval,
                        median_ratio))
    print()
    print(f"{'workload':8s} {'candle img/s':>13s} {'torch img/s':>12s} {'ratio of medians':>17s} "
          f"{'95% interval':>13s} {'median ratio':>13s}   (medians of {args.runs} alternating runs)")
    for what, mo, mt, r1, (low, high), r2 in summary:
        print(f"{what:8s} {mo:13.1f} {mt:12.1f} {r1:16.2f}x {low:6.2f}-{high:.2f}x {r2:12.2f}x")
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
