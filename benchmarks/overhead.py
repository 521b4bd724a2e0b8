"""Per-step cost of gradscope and of what people use instead, interleaved in one run.

    python benchmarks/overhead.py [--model resnet|demo|transformer] [--steps 50] [--rounds 5]

Trains a model (CPU, or CUDA when present) in rounds; each round runs every contender for
--steps steps: bare, gradscope with default settings, gradscope with everything on every step,
hand-written forward/gradient hooks with .item(), torch.autograd.detect_anomaly, and
TensorBoard's add_histogram of every gradient (needs the tensorboard package). Prints each
median step time and its ratio to bare. gradscope rounds are timed after the dense start of a
run (its first steps always get full statistics). Prints the ratio of median step times and
of total (mean) step times: the total includes the statistics steps, at their rate (a window
of --steps steps, a multiple of --stats-every, holds steps/stats_every of them), and the median
ratio of the default contender's statistics steps alone (one a round at the default). Models: `resnet`, a small
ResNet-style CNN (in-place ReLUs, batch-norm) on 32x32 images; `transformer`, a 4-layer
encoder (d=128, batch 16x64); `demo`, the demo's LeNet on 32x32 images; for GPUs,
`resnet50` (torchvision's, batch 64 of 224x224) and `transformer-large` (12 layers, d=768,
batch 16x256).
"""

import argparse
import contextlib
import importlib.util
import statistics
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

import gradscope
from common import timed_steps
from gradscope.demo import Net
from gradscope.settings import DEFAULTS
from models import Transformer


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


def make(model: str, batch: int, device):
    if model == "transformer":
        return Transformer(), torch.randint(0, 1000, (16, 64), device=device)
    if model == "transformer-large":
        return Transformer(768, 12, 12, 32000), torch.randint(0, 32000, (16, 256), device=device)
    if model == "resnet50":  # torchvision's, with its in-place ReLUs; batch 64 of 224x224
        import torchvision

        return torchvision.models.resnet50(num_classes=10), torch.randn(64, 3, 224, 224, device=device)
    net = small_resnet() if model == "resnet" else Net()
    return net, torch.randn(batch, 1, 32, 32, device=device)


@contextlib.contextmanager
def bare(net, opt, path, stats_every):
    yield


@contextlib.contextmanager
def gradscope_default(net, opt, path, stats_every):
    with gradscope.watch(net, opt, record=path, stats_every=stats_every):
        yield


def gradscope_full(net, opt, path, stats_every):
    return gradscope_default(net, opt, path, stats_every=1)


@contextlib.contextmanager
def hand_hooks(net, opt, path, stats_every):
    """What people write by hand: print-style statistics with .item() in module hooks."""
    seen = []

    def forward(module, inputs, output):
        if isinstance(output, torch.Tensor):
            seen.append((output.mean().item(), output.std().item()))
            if output.requires_grad:
                output.register_hook(lambda g: seen.append(g.norm().item()))

    handles = [m.register_forward_hook(forward) for m in net.modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def detect_anomaly(net, opt, path, stats_every):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autograd.detect_anomaly():
            yield


@contextlib.contextmanager
def tensorboard_histograms(net, opt, path, stats_every):
    """TensorBoard's add_histogram of every gradient, every step (after the optimizer step)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(path.with_suffix("")))
    step = [0]

    def log(optimizer, args, kwargs):
        for name, p in net.named_parameters():
            if p.grad is not None:
                writer.add_histogram(name, p.grad, step[0])
        step[0] += 1

    handle = opt.register_step_post_hook(log)
    try:
        yield
    finally:
        handle.remove()
        writer.close()


CONTENDERS = {
    "bare": bare, "gradscope": gradscope_default, "gradscope (everything)": gradscope_full,
    "hand-written hooks": hand_hooks, "detect_anomaly": detect_anomaly,
    "tensorboard histograms": tensorboard_histograms,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated contenders (bare is always needed)")
    parser.add_argument("--model", choices=("resnet", "demo", "transformer", "resnet50", "transformer-large"),
                        default="resnet", help="resnet50 and transformer-large are the GPU targets' models")
    parser.add_argument("--steps", type=int, default=DEFAULTS.stats_every)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--stats-every", type=int, default=DEFAULTS.stats_every, help="gradscope's default setting")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net, x = make(args.model, args.batch, device)
    net = net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    y = torch.randint(0, 10, (x.shape[0],), device=device)
    timed_steps(net, opt, x, y, 5, device)  # warm-up
    chosen = [c for c in CONTENDERS if args.only is None or c == "bare" or c in args.only.split(",")]
    if "tensorboard histograms" in chosen and importlib.util.find_spec("tensorboard") is None:
        chosen.remove("tensorboard histograms")
        print("tensorboard histograms: left out, the tensorboard package is not installed")
    times: dict[str, list[float]] = {name: [] for name in chosen}
    statistics_steps: list[float] = []  # the default contender's steps that took module statistics
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            for name in chosen:
                with CONTENDERS[name](net, opt, Path(folder) / f"{name}{r}.sqlite", args.stats_every):
                    if name.startswith("gradscope"):
                        timed_steps(net, opt, x, y, DEFAULTS.dense_steps, device)  # past the dense start of a run
                    timed = timed_steps(net, opt, x, y, args.steps, device)
                    times[name] += timed
                    if name == "gradscope":
                        statistics_steps += [t for i, t in enumerate(timed, DEFAULTS.dense_steps)
                                             if i % args.stats_every == 0]
    bare = statistics.median(times["bare"])
    bare_mean = statistics.fmean(times["bare"])
    print(f"device {device}, {args.model}, {args.rounds}x{args.steps} steps each, "
          f"torch {torch.__version__}")
    for name, values in times.items():
        median, mean = statistics.median(values), statistics.fmean(values)
        print(f"{name:22} median {median * 1e3:9.3f} ms/step  ratio {median / bare:6.2f}   "
              f"mean {mean * 1e3:9.3f} ms/step  total-time ratio {mean / bare_mean:6.2f}")
    if statistics_steps:
        median = statistics.median(statistics_steps)
        print(f"{'gradscope, statistics steps':22} median {median * 1e3:9.3f} ms/step  ratio {median / bare:6.2f}   "
              f"({len(statistics_steps)} steps: one statistics step among plain ones)")

if __name__ == "__main__":
    main()
