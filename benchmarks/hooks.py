"""Where the training thread's time goes per step: each of gradscope's hooks (after backward,
before and after the optimizer step, module pre and post hooks...), with the recorder stubbed
out, plain steps or statistics steps.

    python benchmarks/hooks.py [--model tensors] [--size 2000] [--steps 30] [--stats-every 1000]

Each hook is timed around its call (`perf_counter`, ms per step, the timer's own cost
included: ≈0.5 µs a call, which counts with thousands of module calls). The step times are
the medians of bare and watched steps; what the hooks do not account for is torch's own
slower paths while gradscope watches (every module call takes torch's slow path while a global
module hook exists) and garbage collection.
"""

from __future__ import annotations

import collections
import statistics
import tempfile
import time
from pathlib import Path

import gradscope
from common import cpu_training, model_label, model_options, stub_recorder, timed_steps
from gradscope import session
from gradscope.settings import DEFAULTS
from gradscope.trace import modules

HOOKS = {
    session.Session: ("before_backward", "after_backward", "on_optimizer_pre", "on_optimizer_post", "on_zero_grad",
                      "_end_step", "_eval_modules"),
    modules.ModuleHooks: ("_pre_hook", "_post_hook", "_on_output_grad"),
}


def timed(spent: collections.Counter, owner, name: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    args = model_options(steps=30, stats_every=1000)
    net, opt, x, y = cpu_training(args.model, args.size)
    timed_steps(net, opt, x, y, 3)
    stub_recorder()
    spent: collections.Counter = collections.Counter()
    for owner, names in HOOKS.items():
        for name in names:
            timed(spent, owner, name)
    bare = timed_steps(net, opt, x, y, args.steps)
    with tempfile.TemporaryDirectory() as folder:
        with gradscope.watch(net, opt, record=Path(folder) / "r.sqlite", stats_every=args.stats_every):
            timed_steps(net, opt, x, y, DEFAULTS.dense_steps + 2)
            spent.clear()
            watched = timed_steps(net, opt, x, y, args.steps)
    b, w = statistics.median(bare), statistics.median(watched)
    print(f"{model_label(args)}, statistics every {args.stats_every} steps, recorder stubbed out")
    print(f"  step: bare {b * 1e3:.1f} ms, watched {w * 1e3:.1f} ms (+{(w - b) * 1e3:.1f} ms)")
    for name, seconds in spent.most_common():
        print(f"  {name:20} {seconds / args.steps * 1e3:7.2f} ms/step")
    outer = sum(seconds for name, seconds in spent.items() if name not in ("_end_step", "_eval_modules"))
    print(f"  {'(hooks in all)':20} {outer / args.steps * 1e3:7.2f} ms/step"
          "  (_end_step and _eval_modules run inside the others)")


if __name__ == "__main__":
    main()
