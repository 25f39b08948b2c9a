#!/usr/bin/env python3
"""PyTorch round trip of the mnist example's model-only file.

Loads `<out>/model.safetensors` (written by `cargo run --release --example mnist`) into
the pytorch/examples VAE with `load_state_dict(strict=True)`, then scores the MNIST test
set the way the example's `--eval` does (grayscale pixels, Bernoulli, the analytic KL,
one posterior sample per image): the KL term is deterministic and must agree with the
example's to f32 rounding; the reconstruction term is Monte-Carlo and must agree within
its standard error. With --checkpoint it also shows that the training checkpoint (with
the optimiser's moments) is refused by the strict load, as it should be.

The other direction: `--train-torch N --save PATH` trains the PyTorch example for N
epochs (its recipe: Adam 1e-3, batch 128, summed BCE + KL), writes its state_dict with
`safetensors.torch.save_file`, and scores it as above; then
`cargo run --release --example mnist -- --eval PATH` must print the same KL.

    python3 benches/compare/pytorch_roundtrip.py --model runs/mnist/model.safetensors \
        --data ../shared/datasets/mnist [--checkpoint runs/mnist/checkpoint.safetensors]

Needs torch, numpy and safetensors (`pip install torch numpy safetensors`), not in CI.
"""

import argparse
import gzip
import math
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


class VAE(nn.Module):
    """pytorch/examples vae/main.py, unchanged."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))


def test_images(data: pathlib.Path) -> torch.Tensor:
    for name in ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"]:
        path = data / name
        if path.exists():
            raw = gzip.open(path).read() if name.endswith(".gz") else path.read_bytes()
            count = int.from_bytes(raw[4:8], "big")
            pixels = np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, 784)
            return torch.from_numpy(pixels.astype(np.float32) / 255.0)
    raise SystemExit(f"no t10k-images-idx3-ubyte(.gz) in {data}")


def train_images(data: pathlib.Path) -> torch.Tensor:
    raw = gzip.open(data / "train-images-idx3-ubyte.gz").read()
    count = int.from_bytes(raw[4:8], "big")
    pixels = np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, 784)
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)


def train_torch(args):
    """Trains the PyTorch example and saves its state_dict to --save (then scored as --model)."""
    from safetensors.torch import save_file

    if args.save is None:
        raise SystemExit("--train-torch needs --save PATH")
    torch.manual_seed(args.seed)
    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = train_images(args.data)
    for epoch in range(1, args.train_torch + 1):
        perm = torch.randperm(x.shape[0])
        total = 0.0
        for i in range(0, x.shape[0], 128):
            batch = x[perm[i : i + 128]]
            mu, logvar = model.encode(batch)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            recon = model.decode(z)
            bce = F.binary_cross_entropy(recon, batch, reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = bce + kld
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        print(f"torch epoch {epoch}: train -ELBO {total / x.shape[0]:.4f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.save))
    print(f"state_dict saved: {args.save}")
    args.model = args.save


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=pathlib.Path)
    parser.add_argument("--data", type=pathlib.Path, required=True)
    parser.add_argument("--checkpoint", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-torch", type=int, default=0, metavar="EPOCHS")
    parser.add_argument("--save", type=pathlib.Path)
    args = parser.parse_args()

    if args.train_torch > 0:
        train_torch(args)
    model = VAE()
    state = load_file(str(args.model))
    model.load_state_dict(state, strict=True)
    print(f"strict load_state_dict of {args.model}: ok ({len(state)} tensors: {sorted(state)})")

    if args.checkpoint is not None:
        try:
            VAE().load_state_dict(load_file(str(args.checkpoint)), strict=True)
            print(f"{args.checkpoint}: loaded (unexpected: it holds optimiser state)")
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            print(f"{args.checkpoint}: refused by the strict load, as expected: {first}")

    x = test_images(args.data)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).double()
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = model.decode(z)
        rec = F.binary_cross_entropy(recon, x, reduction="none").sum(dim=1).double()
    n = x.shape[0]
    se = rec.std().item() / math.sqrt(n)
    print(
        f"test ({n} images): -ELBO {(rec + kl).mean().item():.4f} = reconstruction "
        f"{rec.mean().item():.4f} (± {se:.4f} s.e.) + KL {kl.mean().item():.4f}"
    )


if __name__ == "__main__":
    main()
