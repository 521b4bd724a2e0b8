"""Models shared by the benchmarks: small enough for a CPU, shaped like the real thing.

`resnet_style` is a 16-block ResNet-style CNN with 134 parameter tensors (convolutions with
biases, batch-norm, in-place ReLUs); `transformer` a 4-layer encoder (d=128, 50 tensors);
`Unrolled` an RNN cell unrolled over a sequence;
`many_tensors` an MLP whose parameter tensors number as asked; `many_modules` a model with as
many (parameter-free and linear) modules as asked; `one_big` one parameter of n elements.
For GPUs: `ResNet`, ResNet-50's architecture (bottleneck blocks), and `Transformer` at any size.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def resnet_style(channels: int = 16) -> nn.Module:
    """134 parameter tensors: a stem (4), 16 blocks (8 each) and a linear head (2)."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        *[Block(channels) for _ in range(16)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10),
    )


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ResNet-50's architecture (bottleneck blocks 3-4-6-3; gpu.py's when torchvision is absent)."""

    def __init__(self, layers=(3, 4, 6, 3), width=64, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, inplanes = [], width
        for i, count in enumerate(layers):
            planes = width * 2 ** i
            for j in range(count):
                blocks.append(Bottleneck(inplanes, planes, 2 if j == 0 and i > 0 else 1))
                inplanes = planes * 4
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inplanes, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class Transformer(nn.Module):
    """An encoder on token ids; by default 4 layers, d=128 (50 parameter tensors)."""

    def __init__(self, d: int = 128, layers: int = 4, heads: int = 4, vocab: int = 1000):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


class Unrolled(nn.Module):
    """An RNN cell applied once per time step of `x` (time, batch, features), then a linear head:
    an autograd graph that grows with the sequence (about 6 nodes a step)."""

    def __init__(self, features: int = 4, hidden: int = 8):
        super().__init__()
        self.cell, self.head = nn.RNNCell(features, hidden), nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.zeros(x.shape[1], self.cell.hidden_size)
        for t in range(len(x)):
            h = self.cell(x[t], h)
        return self.head(h)


def many_tensors(n: int, width: int = 8) -> nn.Module:
    """An MLP of n // 2 linear layers (a weight and a bias each): n parameter tensors."""
    layers = []
    for _ in range(n // 2):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers[:-1], nn.Flatten())


class Wide(nn.Module):
    """`n` modules in all: linear layers between groups of parameter-free activations."""

    def __init__(self, n: int, width: int = 16):
        super().__init__()
        blocks = []
        count = 1  # this module
        while count < n:
            blocks += [nn.Linear(width, width), nn.Identity(), nn.Tanh(), nn.Identity()]
            count += 4
        self.body = nn.Sequential(*blocks)

    def forward(self, x):
        return self.body(x)


def many_modules(n: int) -> nn.Module:
    return Wide(n)


class OneBig(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n) * 0.01)

    def forward(self, x):
        return (self.weight.sum() * x).reshape(1, 1).expand(1, 10)


def make(name: str, device, *, batch: int = 8, size: int = 0):
    """(model, input, number of classes) for a benchmark model name."""
    if name == "resnet":
        return resnet_style(), torch.randn(batch, 3, 16, 16, device=device)
    if name == "transformer":
        return Transformer(), torch.randint(0, 1000, (batch, 32), device=device)
    if name == "tensors":
        return many_tensors(size), torch.randn(batch, 8, device=device)
    if name == "modules":
        return many_modules(size), torch.randn(batch, 16, device=device)
    if name == "big":
        return OneBig(size), torch.ones((), device=device)
    raise ValueError(name)
