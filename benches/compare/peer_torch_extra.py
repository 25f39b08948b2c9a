#!/usr/bin/env python3
"""PyTorch peers for the workloads that ../shared/bench/peer_torch_vae.py does not time:

  train one epoch of the pytorch/examples VAE (shuffled batches of 128 moved to the
        device one at a time, BCE with logits summed + analytic KL, Adam 1e-3), for
        `--device cuda`: the CPU comparisons keep using peer_torch_vae.py;

  nll   importance-sampled log-likelihood (Burda et al. 2015) of the MNIST VAE,
        K samples per image in chunks, on the first N test images, under no_grad;
  conv  training steps of a convolutional VAE (4x4 stride-2 convolutions, ReLU,
        Bernoulli logits, BCE summed + analytic KL, Adam 1e-3), on MNIST at 28x28
        (stages 32, 64, latent 20, batch 128) or on uniform noise at 3x64x64
        (stages 32, 64, 128, 256, latent 32, batch 64).

Each mirrors candle-vae's side (compare_vae.rs) step for step: same layer shapes, same
chunking, same batches. Freshly initialised models: the cost does not depend on the
weights. Prints one JSON line.

Usage:
  peer_torch_extra.py train --data DIR [--device cuda]
  peer_torch_extra.py nll  --data DIR [--images 1000] [--samples 1000] [--chunk 100]
                           [--block-images 0] [--threads 2]
  peer_torch_extra.py conv [--data DIR] --size 28|64 [--steps 40] [--batch-size B] [--threads 2]
DIR holds MNIST IDX files (uncompressed or .gz). `--device cuda` runs on the GPU; every
timed region ends with a value read back to the host (`.item()`), which waits for it.
"""
import argparse
import gzip
import json
import math
import os
import struct
import time

import torch
import torch.nn.functional as F
from torch import nn, optim


def read_idx_images(path):
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            f = gzip.open(p, "rb") if p.endswith(".gz") else open(p, "rb")
            with f:
                magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
                if magic != 2051:
                    raise ValueError(f"{p}: bad IDX image magic {magic}")
                buf = f.read(n * rows * cols)
            t = torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(n, rows * cols)
            return t.to(torch.float32).div_(255.0)
    raise FileNotFoundError(path + "[.gz]")


class MlpVae(nn.Module):
    """pytorch/examples VAE, returning logits (the likelihood is BCE with logits)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def decode(self, z):
        return self.fc4(F.relu(self.fc3(z)))


LN_2PI = math.log(2 * math.pi)


def train(args):
    dev = torch.device(args.device)
    x = read_idx_images(os.path.join(args.data, "train-images-idx3-ubyte"))
    model = MlpVae().to(dev)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    batch = args.batch_size or 128
    t0 = time.perf_counter()
    total = 0.0
    for idx in torch.randperm(x.shape[0]).split(batch):
        xs = x[idx].to(dev)
        mu, logvar = model.encode(xs)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        rec = F.binary_cross_entropy_with_logits(model.decode(z), xs, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = rec + kld
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
    seconds = time.perf_counter() - t0
    return {"mode": "train", "device": args.device, "seconds": round(seconds, 3),
            "images_per_sec": round(x.shape[0] / seconds, 1),
            "train_loss_per_example": round(total / x.shape[0], 4)}


@torch.no_grad()
def nll(args):
    dev = torch.device(args.device)
    x = read_idx_images(os.path.join(args.data, "t10k-images-idx3-ubyte"))[: args.images].to(dev)
    model = MlpVae().eval().to(dev)
    t0 = time.perf_counter()
    # --block-images B: the images in blocks of B, each encoded once and decoded
    # --chunk samples at a time (candle-vae's log_likelihood does this with the blocks
    # that keep a pass within 8 MiB of logits: 26 images at --chunk 100); 0: all at once.
    block = args.block_images or x.shape[0]
    log_px = torch.cat([block_log_px(model, x[i:i + block], args)
                        for i in range(0, x.shape[0], block)])
    mean = log_px.mean().item()
    seconds = time.perf_counter() - t0
    n = x.shape[0]
    return {"mode": "nll", "images": n, "samples": args.samples, "seconds": round(seconds, 3),
            "images_per_sec": round(n / seconds, 2), "mean_log_px": round(mean, 4)}


def block_log_px(model, x, args):
    dev = x.device
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    n, d = mu.shape
    running = None
    done = 0
    while done < args.samples:
        k = min(args.chunk, args.samples - done)
        eps = torch.randn(k, n, d, device=dev)
        z = mu + eps * std
        logits = model.decode(z.reshape(k * n, d)).reshape(k, n, 784)
        log_px = -F.binary_cross_entropy_with_logits(
            logits, x.expand(k, n, 784), reduction="none").sum(-1)
        log_pz = -0.5 * (z.pow(2) + LN_2PI).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + logvar + LN_2PI).sum(-1)
        chunk = torch.logsumexp((log_px + log_pz - log_qz).double(), 0)
        running = chunk if running is None else torch.logsumexp(torch.stack([running, chunk]), 0)
        done += k
    return running - math.log(args.samples)


class ConvVae(nn.Module):
    def __init__(self, channels_in, size, stages, latent):
        super().__init__()
        convs, c = [], channels_in
        for out in stages:
            convs.append(nn.Conv2d(c, out, 4, 2, 1))
            c = out
        self.convs = nn.ModuleList(convs)
        side = size // 2 ** len(stages)
        self.side, self.last = side, stages[-1]
        width = stages[-1] * side * side
        self.mean = nn.Linear(width, latent)
        self.log_var = nn.Linear(width, latent)
        self.project = nn.Linear(latent, width)
        outs = [channels_in] + list(stages[:-1])
        self.deconvs = nn.ModuleList(
            [nn.ConvTranspose2d(stages[i], outs[i], 4, 2, 1) for i in reversed(range(len(stages)))])

    def forward(self, x):
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))
        h = h.flatten(1)
        mu, logvar = self.mean(h), self.log_var(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        h = F.relu(self.project(z)).view(-1, self.last, self.side, self.side)
        for i, deconv in enumerate(self.deconvs):
            h = deconv(h)
            if i + 1 < len(self.deconvs):
                h = F.relu(h)
        return h, mu, logvar


def conv(args):
    if args.size == 28:
        channels, stages, latent, batch = 1, [32, 64], 20, 128
        data = read_idx_images(os.path.join(args.data, "train-images-idx3-ubyte")).view(-1, 1, 28, 28)
    elif args.size == 64:
        channels, stages, latent, batch = 3, [32, 64, 128, 256], 32, 64
        data = torch.rand(2048, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    else:
        raise SystemExit("--size must be 28 or 64")
    batch = args.batch_size or batch
    dev = torch.device(args.device)
    data = data.to(dev)
    model = ConvVae(channels, args.size, stages, latent).to(dev)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    batches = data.shape[0] // batch
    t0 = time.perf_counter()
    last = 0.0
    for step in range(args.steps):
        first = (step % batches) * batch
        x = data[first:first + batch]
        opt.zero_grad()
        logits, mu, logvar = model(x)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = rec + kld
        loss.backward()
        opt.step()
        last = loss.item() / batch
    seconds = time.perf_counter() - t0
    return {"mode": "conv", "size": args.size, "batch_size": batch, "steps": args.steps,
            "seconds": round(seconds, 3), "images_per_sec": round(args.steps * batch / seconds, 1),
            "last_loss_per_example": round(last, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train", "nll", "conv"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default="")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--block-images", type=int, default=0)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = {"train": train, "nll": nll, "conv": conv}[args.mode](args)
    out.update({"torch": torch.__version__, "threads": torch.get_num_threads()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
