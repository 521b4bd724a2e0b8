"""What the recorder thread's work costs a Python-bound training thread, through the GIL.

    python benchmarks/gil.py [--size 2000] [--seconds 1.5]

The recorder runs in the training process, so it shares the GIL with the training thread. Here
the main thread stands in for a training thread that is mostly Python (a model of thousands of
small modules): it counts in a Python loop, alone and then while another thread repeats one
part of a recorder's plain step of `--size` gradients:

* decoding the step (`writer.decode`: its grad-norm, update and step-update rows);
* inserting its statistics and update rows into SQLite (`schema.STATS`, `schema.UPDATES`);
* for reference, a pure Python loop, and a sleep (no work at all).

For each part it prints the main thread's counting rate relative to alone, and the share of
wall time the other thread spent on the CPU. A part that holds the GIL while it works takes it
from the main thread; SQLite releases it while it runs a statement, so its own work costs the
main thread nothing while a core is free (and the inserting thread waits for the GIL instead).
"""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time

import torch

from gradscope.data import StepData
from gradscope.record import schema, writer
from gradscope.trace.batch import RowBatch


def plain_step(size: int, number: int) -> writer.StepSnapshot:
    """A plain step's snapshot of `size` gradients, as the training thread hands it over."""
    names = [f"layers.{i}.weight" for i in range(size)]
    batch = RowBatch()
    batch.add("grad-norm", [(name, 0, "") for name in names], [64] * size, torch.rand(size, 2))
    batch.add("update", [(name, 0) for name in names], [1] * size, torch.rand(size, 3, dtype=torch.float64))
    batch.add("step-update", names, [1] * size, torch.rand(size, 2, dtype=torch.float64))
    return writer.StepSnapshot(StepData(step=number, time=time.time()), batch.freeze())


def count(seconds: float) -> float:
    """Iterations of a Python loop per second, for `seconds`."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            n += 1
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.executescript(schema.STATS.ddl() + schema.UPDATES.ddl())
    decoded = writer.decode(plain_step(args.size, 0))

    def insert(number: int) -> None:
        schema.STATS.insert(conn, decoded.stats.rows, step=number)
        schema.UPDATES.insert(conn, decoded.updates.rows.values(), replace=True, step=number)

    def python_loop(number: int) -> None:
        total = 0
        for i in range(50_000):
            total += i

    snapshots = [plain_step(args.size, number) for number in range(8)]
    parts = {
        "decode": lambda number: writer.decode(snapshots[number % len(snapshots)]),
        "SQLite inserts": insert,
        "Python loop": python_loop,
        "sleep": lambda number: time.sleep(0.004),
    }
    alone = count(args.seconds)
    print(f"{args.size} gradients a step; a Python loop alone: {alone / 1e6:.1f}M iterations/s")
    for name, part in parts.items():
        stop = threading.Event()
        spent = [0, 0.0]  # runs, CPU seconds

        def repeat(part=part, spent=spent, stop=stop) -> None:
            while not stop.is_set():
                cpu = time.thread_time()
                part(spent[0])
                spent[1] += time.thread_time() - cpu
                spent[0] += 1

        thread = threading.Thread(target=repeat)
        thread.start()
        start = time.perf_counter()
        rate = count(args.seconds)
        wall = time.perf_counter() - start
        stop.set()
        thread.join()
        print(f"  {name:15} main thread x{rate / alone:.2f} of alone; the other thread on the CPU "
              f"{spent[1] / wall:4.0%} of the time ({spent[0]} runs, {spent[1] / max(spent[0], 1) * 1e3:.2f} ms each)")


if __name__ == "__main__":
    main()
