#!/usr/bin/env python3
"""PyTorch reference for docs/RESULTS.md MNIST (b): the pytorch/examples VAE trained on
dynamically binarized MNIST, scored on one fixed binarized test set.

The model, loss and optimiser are those of ../shared/bench/peer_torch_vae.py (imported,
not copied): 784-400-20 ReLU MLP, BCE summed + analytic KL, Adam 1e-3, batch 128. What
this script adds is the data and the evaluation the candle-vae example uses:

* training images drawn afresh every epoch, x ~ Bernoulli(pixel / 255) (Burda et al. 2015);
* the test set binarized once, with a generator seeded independently of --seed;
* test -ELBO with one posterior sample per image, then the importance-sampled
  log-likelihood log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k | x) with K samples per
  test image (chunked, log-sum-exp), the estimator of candle_vae::estimate.

With --evaluate CHECKPOINT it trains nothing and scores a model saved by the candle-vae
example (its fc1 ... fc4 tensors load into the PyTorch module as they are): the same
model under both implementations of the estimator.

Usage (torch in a virtualenv outside the repository):
  $HOME/torch-venv/bin/python benches/compare/peer_torch_dynamic.py \
      --data /path/to/datasets/mnist --seeds 1 2 3
  $HOME/torch-venv/bin/python benches/compare/peer_torch_dynamic.py \
      --data /path/to/datasets/mnist --evaluate runs/dynamic/checkpoint.safetensors
Prints one line per epoch and one summary line per seed (or per evaluation).
"""
import argparse
import importlib.util
import json
import math
import os
import struct
import time

import torch
import torch.nn.functional as F
from torch import optim

TEST_BINARIZATION_SEED = 2015


def load_peer(path):
    spec = importlib.util.spec_from_file_location("peer_torch_vae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logits(model, z):
    """The decoder before its sigmoid: BCE with logits is exact where sigmoid+BCE clamps."""
    return model.fc4(F.relu(model.fc3(z)))


@torch.no_grad()
def test_elbo(model, peer, data, bs=128):
    total = 0.0
    for i in range(0, data.shape[0], bs):
        x = data[i:i + bs]
        recon, mu, logvar = model(x)
        total += peer.loss_function(recon, x, mu, logvar).item()
    return total / data.shape[0]


@torch.no_grad()
def nll(model, data, k, chunk=100, bs=100):
    """-log p(x) averaged over data, importance-sampled from q(z|x) with k samples."""
    total = 0.0
    log2pi = math.log(2 * math.pi)
    for i in range(0, data.shape[0], bs):
        x = data[i:i + bs]
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        log_w = []
        for _ in range(0, k, chunk):
            eps = torch.randn(chunk, *mu.shape)
            z = mu + std * eps
            log_px_z = -F.binary_cross_entropy_with_logits(
                logits(model, z), x.expand(chunk, *x.shape), reduction="none").sum(-1)
            log_pz = (-0.5 * (z * z + log2pi)).sum(-1)
            log_qz = (-0.5 * (eps * eps + log2pi + logvar)).sum(-1)
            log_w.append(log_px_z + log_pz - log_qz)
        log_w = torch.cat(log_w, 0)
        total -= (torch.logsumexp(log_w, 0) - math.log(k)).sum().item()
    return total / data.shape[0]


def load_safetensors_f32(path, prefix="fc"):
    """The F32 tensors of a safetensors file whose names start with prefix (no extra
    package needed: an 8-byte header length, a JSON header, then raw little-endian data)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or not name.startswith(prefix) or info["dtype"] != "F32":
            continue
        begin, end = info["data_offsets"]
        data = bytearray(raw[8 + n + begin:8 + n + end])
        tensors[name] = torch.frombuffer(data, dtype=torch.float32).view(info["shape"]).clone()
    return tensors


def evaluate_checkpoint(args, peer, test):
    torch.manual_seed(1)
    model = peer.VAE()
    model.load_state_dict(load_safetensors_f32(args.evaluate))
    model.eval()
    elbo = test_elbo(model, peer, test)
    estimate = nll(model, test, args.k)
    print(f"{args.evaluate}: test -ELBO {elbo:.4f} | NLL (IS, k = {args.k}) {estimate:.4f} nats",
          flush=True)


def run(args, peer, train, test, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = peer.VAE()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    n = train.shape[0]
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        binary = torch.bernoulli(train, generator=gen)
        perm = torch.randperm(n, generator=gen)
        model.train()
        total = 0.0
        for i in range(0, n, args.batch_size):
            x = binary[perm[i:i + args.batch_size]]
            opt.zero_grad()
            recon, mu, logvar = model(x)
            loss = peer.loss_function(recon, x, mu, logvar)
            loss.backward()
            total += loss.item()
            opt.step()
        model.eval()
        print(f"seed {seed} epoch {epoch:2d} train {total / n:.4f} "
              f"test {test_elbo(model, peer, test):.4f}", flush=True)
    seconds = time.perf_counter() - t0
    model.eval()
    elbo = test_elbo(model, peer, test)
    estimate = nll(model, test, args.k)
    print(f"seed {seed}: test -ELBO {elbo:.4f} | NLL (IS, k = {args.k}) {estimate:.4f} nats "
          f"| training {seconds:.1f} s", flush=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_peer = os.path.join(here, "..", "..", "..", "shared", "bench", "peer_torch_vae.py")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="directory with the MNIST IDX files")
    ap.add_argument("--peer", default=default_peer, help="path of peer_torch_vae.py")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--evaluate", help="score this candle-vae checkpoint instead of training")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peer = load_peer(args.peer)
    train, test = peer.load_mnist(args.data)
    test = torch.bernoulli(test, generator=torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    if args.evaluate:
        evaluate_checkpoint(args, peer, test)
        return
    for seed in args.seeds:
        run(args, peer, train, test, seed)


if __name__ == "__main__":
    main()
