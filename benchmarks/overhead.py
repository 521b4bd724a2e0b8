"""Per-step cost of gradscope.watch against a bare training step, interleaved in one run.

    python benchmarks/overhead.py [--model resnet|demo|transformer] [--steps 30] [--rounds 5]

Trains a model (CPU, or CUDA when present) in rounds that alternate bare and watched
training, and prints the median step time of each and their ratio. Watched rounds are timed
after the dense start of a run (the first steps always get full statistics). Models: `resnet`, a small
ResNet-style CNN (in-place ReLUs, batch-norm) on 32x32 images; `transformer`, a 4-layer
encoder (d=128, batch 16x64); `demo`, the demo's LeNet on 32x32 images.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import gradscope
from gradscope.session import DENSE_STEPS
from gradscope.demo import Net


def _steps(net, opt, x, y, n, device):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def small_resnet():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        Residual(32), nn.MaxPool2d(2), nn.Conv2d(32, 64, 1), Residual(64), nn.MaxPool2d(2),
        Residual(64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(1000, 128)
        layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(128, 10)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def make(model: str, batch: int, device):
    if model == "transformer":
        return Transformer(), torch.randint(0, 1000, (16, 64), device=device)
    net = small_resnet() if model == "resnet" else Net()
    return net, torch.randn(batch, 1, 32, 32, device=device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("resnet", "demo", "transformer"), default="resnet")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--stats-every", type=int, default=10, help="gradscope's setting (1: everything every step)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net, x = make(args.model, args.batch, device)
    net = net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    y = torch.randint(0, 10, (x.shape[0],), device=device)
    _steps(net, opt, x, y, 5, device)  # warm-up
    bare, watched = [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            bare += _steps(net, opt, x, y, args.steps, device)
            with gradscope.watch(net, opt, record=Path(folder) / f"r{r}.sqlite", stats_every=args.stats_every):
                _steps(net, opt, x, y, DENSE_STEPS, device)  # past the dense start of a run
                watched += _steps(net, opt, x, y, args.steps, device)
    b, w = statistics.median(bare), statistics.median(watched)
    print(f"device {device}, {args.model}, stats every {args.stats_every}, "
          f"{args.rounds}x{args.steps} steps each, torch {torch.__version__}")
    print(f"bare     median {b * 1e3:8.3f} ms/step")
    print(f"watched  median {w * 1e3:8.3f} ms/step")
    print(f"ratio    {w / b:.3f}")


if __name__ == "__main__":
    main()
