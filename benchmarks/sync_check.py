"""Prove that watched steps make no host-device synchronisation (needs a CUDA GPU).

    python benchmarks/sync_check.py [--model resnet|transformer] [--steps 50]

Runs the dense start of a watched run (full statistics every step), then steps with
``torch.cuda.set_sync_debug_mode("error")``: any synchronisation on the training thread —
gradscope's or the step's own — raises. The loop itself avoids syncs (no .item(), no printing
of tensors). Without CUDA it says so and exits 0.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.nn import functional as F

import gradscope
from overhead import make


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("resnet", "transformer", "resnet50", "transformer-large"),
                        default="resnet50")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--stats-every", type=int, default=1)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    device = torch.device("cuda")
    torch.manual_seed(0)
    net, x = make(args.model, 32, device)
    net = net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    y = torch.randint(0, 10, (x.shape[0],), device=device)

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    step()  # warm-up outside the watch: cuDNN choices, allocator
    with tempfile.TemporaryDirectory() as folder:
        with gradscope.watch(net, opt, record=Path(folder) / "s.sqlite", stats_every=args.stats_every,
                             graph_every=0):
            step()  # the first watched step allocates pinned buffers
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(args.steps):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
        record = gradscope.open_record(Path(folder) / "s.sqlite")
        print(f"{args.steps} watched steps on {torch.cuda.get_device_name()} without a synchronisation; "
              f"{len(record.steps())} steps recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
