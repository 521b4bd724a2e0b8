"""Memory and record size under gradscope.watch: flat process memory, known bytes per step.

    python benchmarks/memory.py [--model resnet|transformer|demo] [--steps 10000]

Trains under watch for --steps steps and prints: the process's resident memory at intervals
(it must stay flat), the record's size per step, and gradscope's extra device memory for
update auditing (three samples of at most --sample elements per parameter) as a share of the
parameters' own memory.
"""

import argparse
import gc
import os
import resource
import tempfile
from pathlib import Path

import torch
from torch.nn import functional as F

import gradscope
from overhead import make


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("resnet", "demo", "transformer"), default="demo")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sample", type=int, default=1024)
    args = parser.parse_args()
    torch.manual_seed(0)
    net, x = make(args.model, args.batch, torch.device("cpu"))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    y = torch.randint(0, 10, (x.shape[0],))
    param_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    audit_bytes = sum(3 * min(p.numel(), args.sample) * p.element_size() for p in net.parameters())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.sqlite"
        marks = []
        with gradscope.watch(net, opt, record=path, sample=args.sample):
            for step in range(args.steps):
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
                if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
                    gc.collect()
                    marks.append((step, rss_mb()))
        size = sum(p.stat().st_size for p in Path(folder).iterdir())
    print(f"model {args.model}: {sum(p.numel() for p in net.parameters()):,} parameters, {args.steps} steps")
    for step, mb in marks:
        print(f"  step {step:6d}  resident {mb:8.1f} MB")
    first = marks[len(marks) // 5][1]  # after warm-up (allocator, SQLite cache)
    print(f"resident growth after warm-up: {marks[-1][1] - first:+.1f} MB")
    print(f"record: {size / 2**20:.1f} MB, {size / args.steps:,.0f} bytes/step")
    print(f"update auditing: {audit_bytes / 2**10:.1f} KiB = {100 * audit_bytes / param_bytes:.2f} % of parameter memory")
    print(f"max resident: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB")


if __name__ == "__main__":
    main()
