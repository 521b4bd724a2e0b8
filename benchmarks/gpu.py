"""The GPU figures in one run: step-time ratios, extra device memory and synchronisations.

    PYTHONPATH=.:plugins python benchmarks/gpu.py            # a CUDA GPU, a few minutes
    PYTHONPATH=.:plugins python benchmarks/gpu.py --quick    # tiny sizes, any device (a smoke test)

Needs only torch and this repository. Models: ResNet-50 at batch 64 of 224x224 (torchvision's
when it imports, else the same bottleneck architecture from models.py) and a 12-layer transformer
encoder (d=768, 12 heads, batch 16x256). For each: bare steps, gradscope with default settings
and with everything every step (``stats_every=1``), in interleaved rounds after each watched
run's dense start; the ratios of mean (total time) and median step times to bare; the peak
device memory of each contender over bare's; and whether the whole watched loop, dense start
included, runs under ``torch.cuda.set_sync_debug_mode("error")`` (a synchronisation raises; it
is reported with where it happened, and the run goes on without the mode). Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import gradscope
from common import step, sync, timed_steps
from gradscope.settings import DEFAULTS
from models import ResNet, Transformer


# -- models ---------------------------------------------------------------------------------------
def resnet50(quick: bool):
    if quick:
        return "resnet (tiny)", ResNet((1, 1, 1, 1), width=8), (4, 3, 32, 32)
    try:
        import torchvision

        return "ResNet-50 (torchvision) b64", torchvision.models.resnet50(num_classes=10), (64, 3, 224, 224)
    except Exception:  # torchvision absent or broken: the same architecture
        return "ResNet-50 (models.py) b64", ResNet(), (64, 3, 224, 224)


def transformer(quick: bool):
    if quick:
        return "transformer (tiny)", Transformer(32, 2, 2, 100), (2, 16)
    return "transformer 12x768 b16x256", Transformer(768, 12, 12, 32000), (16, 256)


# -- measuring ------------------------------------------------------------------------------------
def peak_reset(device):
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak(device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def watched_loop(net, opt, x, y, device, stats_every, steps, path, errors: list, notes: list) -> list[float]:
    """A watched run: its dense start, then `steps` timed steps. On CUDA the whole loop runs
    under sync debug mode "error"; the first synchronisation is reported, then the loop goes on
    without the mode (timings of such a run are not comparable and are marked)."""
    settings = dict(stats_every=stats_every)
    strict = device.type == "cuda" and not errors
    timed: list[float] = []
    with gradscope.watch(net, opt, record=path, **settings):
        if strict:
            torch.cuda.set_sync_debug_mode("error")
        try:
            for phase, count in (("dense", DEFAULTS.dense_steps), ("timed", steps)):
                for _ in range(count):
                    try:
                        start = time.perf_counter()
                        step(net, opt, x, y)
                        if strict:
                            torch.cuda.set_sync_debug_mode(0)
                        sync(device)
                        if strict:
                            torch.cuda.set_sync_debug_mode("error")
                        if phase == "timed":
                            timed.append(time.perf_counter() - start)
                    except RuntimeError as exc:
                        if not strict:
                            raise
                        torch.cuda.set_sync_debug_mode(0)
                        strict = False
                        where = [f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                 for f in traceback.extract_tb(exc.__traceback__)][-4:]
                        errors.append(f"{str(exc).splitlines()[0]} at {' <- '.join(reversed(where))}")
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    record = gradscope.open_record(path)
    recorded = len(record.steps())
    if recorded != DEFAULTS.dense_steps + steps:
        notes.append(f"stats_every={stats_every}: {recorded} of {DEFAULTS.dense_steps + steps} steps recorded")
    notes += [f"internal error: {f.message}" for f in record.findings() if f.check == "internal-error"]
    return timed


def measure(name, net, shape, device, rounds, steps, folder):
    torch.manual_seed(0)
    net = net.to(device)
    if len(shape) == 2:
        x = torch.randint(0, net.embed.num_embeddings, shape, device=device)
    else:
        x = torch.randn(*shape, device=device)
    y = torch.randint(0, 10, (shape[0],), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    timed_steps(net, opt, x, y, 3, device)  # warm-up: cuDNN choices, allocator
    times = {"bare": [], "default": [], "full": []}
    peaks = {"bare": 0, "default": 0, "full": 0}
    errors: list[str] = []  # synchronisations
    notes: list[str] = []  # steps not recorded, internal errors
    for r in range(rounds):
        peak_reset(device)
        times["bare"] += timed_steps(net, opt, x, y, steps, device)
        peaks["bare"] = max(peaks["bare"], peak(device))
        for label, every in (("default", DEFAULTS.stats_every), ("full", 1)):
            peak_reset(device)
            times[label] += watched_loop(net, opt, x, y, device, every, steps,
                                         Path(folder) / f"{label}{r}.sqlite", errors, notes)
            peaks[label] = max(peaks[label], peak(device))
    bare_mean, bare_median = statistics.fmean(times["bare"]), statistics.median(times["bare"])
    row = {"model": name, "bare_ms": bare_mean * 1e3, "errors": errors, "notes": notes}
    for label in ("default", "full"):
        row[f"{label}_mean"] = statistics.fmean(times[label]) / bare_mean
        row[f"{label}_median"] = statistics.median(times[label]) / bare_median
        row[f"{label}_mem"] = (peaks[label] - peaks["bare"]) / peaks["bare"] if peaks["bare"] else None
    row["tensors"] = sum(1 for _ in net.parameters())
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and few steps (a smoke test)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per contender and round")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (3 if args.quick else DEFAULTS.stats_every)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (no CUDA: no sync check)"
    print(f"gradscope GPU figures: {where}, torch {torch.__version__}, {rounds} rounds x {steps} "
          f"timed steps per contender, after a dense start of {DEFAULTS.dense_steps} steps\n")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for make in (resnet50, transformer):
            name, net, shape = make(args.quick)
            started = time.perf_counter()
            rows.append(measure(name, net, shape, device, rounds, steps, folder))
            print(f"  {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
            del net
            if device.type == "cuda":
                torch.cuda.empty_cache()
    pct = lambda v: "n/a" if v is None else f"{100 * v:+.1f} %"  # noqa: E731
    print("| model | tensors | bare ms/step | default (mean / median) | everything every step (mean / median) "
          "| extra peak memory default / full | syncs in the watched loop |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        syncs = "n/a (CPU)" if device.type != "cuda" else ("0" if not r["errors"] else "; ".join(r["errors"]))
        print(f"| {r['model']} | {r['tensors']} | {r['bare_ms']:.1f} | x{r['default_mean']:.3f} / x{r['default_median']:.3f} "
              f"| x{r['full_mean']:.3f} / x{r['full_median']:.3f} | {pct(r['default_mem'])} / {pct(r['full_mem'])} "
              f"| {syncs} |")
    for r in rows:
        for note in dict.fromkeys(r["notes"]):
            print(f"\n{r['model']}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
