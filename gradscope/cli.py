"""Command line: argument parsing only; each command calls into the modules that own the work.

Errors in the user's input print one line (``gradscope: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from . import __version__
from .findings import SEVERITIES
from .terminal import inert

EPILOG = """\
examples:
  gradscope demo                          train a small CNN in the terminal UI
  gradscope demo --bug nan                the same with a planted bug, to see findings
  gradscope view RECORD                   replay a record, or follow one still being written
  gradscope run train.py --epochs 3       run your script unchanged; arguments after the
                                          script go to the script
  gradscope run --report r.json -m pkg.train
  gradscope runs                          list the records in .gradscope/runs
  gradscope report RECORD -o report.json  the JSON report of a record
  gradscope run --fail-on error train.py  exit 3 when a check finds an error (for CI)
  gradscope run -p no:dead-relu --set update-ratio.high=0.2 train.py
  gradscope plugins                       list the checks and other plugins loaded
  gradscope export RECORD -o graph.svg    draw the autograd graph of the last step
  gradscope export RECORD --graph modules -o flow.svg   the data flow between modules
  gradscope export RECORD --chart grad-flow -o g.svg    gradient magnitude per layer

Records are SQLite files, one per run, under .gradscope/runs/ unless --record says otherwise.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradscope",
        description="A debugger for PyTorch training: records the autograd graph, module shapes, "
        "activation and gradient statistics and parameter updates of every step, and reports "
        "what looks wrong.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gradscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a training script unchanged and record it",
        description="Run SCRIPT (or -m MODULE) exactly as python would, attached to every model "
        "that runs a forward and every optimizer that steps. The script's output, exit status "
        "and traceback are its own; gradscope's summary goes to stderr at the end.",
    )
    run.add_argument("--headless", action="store_true",
                     help="no terminal UI: print a summary at the end (the default without a terminal)")
    run.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    run.add_argument("--record", metavar="PATH", help="record file (default: .gradscope/runs/<time>-<script>.sqlite); "
                     "an existing record is replaced only with --overwrite, any other file never")
    run.add_argument("--overwrite", action="store_true", help="replace the gradscope record at --record PATH")
    run.add_argument("--break-on", choices=("error", "warning"), help="in the terminal UI: pause at the "
                     "step where a new finding of this severity (or worse) appears; b changes it")
    run.add_argument("--report", metavar="PATH", help="also write the JSON report to PATH when the script ends")
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a module, like python -m")
    _add_settings(run)
    run.add_argument("script", nargs="?", metavar="SCRIPT", help="the training script")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the script")

    demo = sub.add_parser(
        "demo",
        help="train the tutorial CNN on generated images, under gradscope",
        description="Train a LeNet-style CNN on a generated ten-class image task (no download) "
        "while gradscope records it, then summarize. --bug plants a known mistake.",
    )
    from .demo_bugs import BUGS

    demo.add_argument("--steps", type=_positive, default=200, help="training steps (default 200)")
    demo.add_argument("--bug", choices=sorted(BUGS), help="; ".join(f"{k}: {v}" for k, v in BUGS.items()))
    demo.add_argument("--record", metavar="PATH", help="record file (default: .gradscope/runs/...)")
    demo.add_argument("--overwrite", action="store_true", help="replace the gradscope record at --record PATH")
    demo.add_argument("--report", metavar="PATH", help="also write the JSON report to PATH")
    demo.add_argument("--headless", action="store_true",
                      help="no terminal UI: print progress and a summary (the default without a terminal)")
    demo.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    demo.add_argument("--break-on", choices=("error", "warning"), help="as for run")
    _add_check_options(demo)

    view = sub.add_parser("view", help="open a record in the terminal UI (finished or still running)",
                          description="Browse RECORD in the terminal UI: replay a finished run, or "
                          "follow one that is still being written.")
    view.add_argument("record", metavar="RECORD", help="a record file")

    sub.add_parser("plugins", help="list the loaded plugins",
                   description="List the plugins gradscope loads: name, version, where from "
                   "(built-in or the distribution), and the hooks each implements. "
                   "-p no:NAME switches one off; GRADSCOPE_PLUGINS=a,b loads only those "
                   "third-party plugins.")

    report = sub.add_parser("report", help="write the JSON report of a record",
                            description="Write the JSON report of RECORD (keys: run, modules, "
                            "parameters, optimizers, graph, steps, findings). Several records "
                            "(the ranks of a torchrun job) merge into one report with a 'ranks' list, "
                            "the whole parameters' figures combined from every rank ('global') and "
                            "the cross-rank checks run on the records together ('findings').")
    report.add_argument("record", metavar="RECORD", nargs="+", help="record files")
    report.add_argument("-o", "--output", metavar="PATH", default="-", help="output file (default: stdout)")

    export = sub.add_parser(
        "export", help="draw a record's data flow, autograd graph or charts",
        description="Write a diagram of RECORD. --graph modules (or flow): the data flow between "
        "module calls in call order, tensor shapes on the edges, functional ops between modules "
        "as small nodes, nested modules as clusters. --graph autograd (the default): ops, "
        "parameters with shapes and gradient norms, one cluster per module call, findings in "
        "colour. --graph tree: what module contains what. --chart grad-flow: per-layer gradient "
        "magnitude in forward order; --chart loss: loss and learning rate over the steps. Large "
        "graphs collapse by module depth and repeated structure (an unrolled RNN cell, identical "
        "blocks, a loss summed in a loop) folds into one node. dot output and svg charts need "
        "nothing else; other svg, png and pdf need Graphviz's dot.",
    )
    export.add_argument("record", metavar="RECORD", help="a record file")
    export.add_argument("-o", "--output", metavar="FILE", required=True, help="output file")
    export.add_argument("--step", type=int, metavar="N", help="the step to draw (default: the last)")
    what = export.add_mutually_exclusive_group()
    what.add_argument("--graph", choices=("autograd", "flow", "modules", "tree"), default="autograd",
                      help="the diagram (default: autograd; modules is the same as flow)")
    what.add_argument("--chart", choices=("grad-flow", "loss"), help="a chart instead of a diagram")
    export.add_argument("--steps", type=_step_range, metavar="A:B",
                        help="charts: the steps to cover (grad-flow draws a band over them)")
    export.add_argument("--depth", type=_positive, metavar="K",
                        help="collapse modules K levels down into single nodes (default: as needed)")
    export.add_argument("--format", choices=("dot", "svg", "png", "pdf"),
                        help="output format (default: from the file name)")

    sub.add_parser("runs", help="list the records under .gradscope/runs",
                   description="List the records under .gradscope/runs in the working directory, oldest first.")
    return parser


def _step_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition(":")
    try:
        span = (int(first), int(last))
    except ValueError:
        span = None
    if not sep or span is None or span[0] > span[1]:
        raise argparse.ArgumentTypeError(f"expected a step range A:B with A <= B, got {text!r}")
    return span


def _at_least(minimum: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        wanted = "a positive integer" if minimum == 1 else "0 or a positive integer"
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def _positive(text: str) -> int:
    return _at_least(1, text)


def _non_negative(text: str) -> int:
    return _at_least(0, text)


def _add_settings(parser: argparse.ArgumentParser) -> None:
    from .settings import DEFAULTS, HELP

    parser.add_argument("--sample", type=_positive, default=DEFAULTS.sample, metavar="N", help=HELP["sample"])
    parser.add_argument("--graph-every", type=_non_negative, default=DEFAULTS.graph_every, metavar="N",
                        help=HELP["graph_every"])
    parser.add_argument("--stats-every", type=_positive, default=DEFAULTS.stats_every, metavar="N",
                        help=HELP["stats_every"])
    _add_check_options(parser)


def _add_check_options(parser: argparse.ArgumentParser) -> None:
    checks = parser.add_argument_group("checks")
    checks.add_argument("-p", dest="plugins", action="append", metavar="no:NAME", default=[],
                        help="switch a plugin off, e.g. -p no:dead-relu (repeatable; see: gradscope plugins)")
    checks.add_argument("--set", dest="sets", action="append", metavar="CHECK.KEY=VALUE", default=[],
                        help="tune a check, e.g. --set dead-relu.fraction=0.9 (also [tool.gradscope.CHECK] in pyproject.toml)")
    checks.add_argument("--no-checks", action="store_true", help="record only, run no plugin")
    checks.add_argument("--fail-on", choices=SEVERITIES, metavar="SEVERITY",
                        help=f"exit with status 3 when a finding of SEVERITY or worse exists ({', '.join(SEVERITIES)})")


def _analyzer(args):
    from .plugins import parse_switches
    from .watch import make_analyzer

    disabled = parse_switches(args.plugins)
    return None if args.no_checks else make_analyzer(disabled, sets=args.sets)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _control(args):
    if args.control_fd is None:
        return None
    from .control import Control

    return Control(args.control_fd, args.break_on)


def _under_ui(args, label: str) -> int:
    """Run this very command again in a child process, headless, under the terminal UI."""
    from .outcome import conclude
    from .record.paths import new_record_path
    from .tui.app import run_with_script

    record = Path(args.record) if args.record else new_record_path(label)
    code = run_with_script([args.command, *args.raw], record, args.break_on)
    return conclude(code, record, fail_on=args.fail_on) if record.exists() else code


def _cmd_view(args) -> int:
    from .record.reader import open_record
    from .tui.app import make_app

    open_record(args.record).close()  # a bad file gets its one-line error before any UI
    make_app(Path(args.record)).run()
    return 0


def _cmd_run(args) -> int:
    from . import launch
    from .distributed import rank_and_world, ranked
    from .outcome import conclude

    if args.module:
        target = launch.Target(args.module, ([args.script] if args.script else []) + args.args, True)
    elif args.script:
        target = launch.Target(args.script, args.args)
    else:
        raise _UsageError("run: give a SCRIPT or -m MODULE")
    launch.check_target(target)
    _check_paths(args)
    if args.break_on and args.control_fd is None and (args.headless or not _interactive()):
        raise _UsageError("--break-on pauses in the terminal UI: run without --headless in a terminal")
    if not args.headless and _interactive():
        return _under_ui(args, target.label)
    analyzer = _analyzer(args)
    from .settings import Settings

    settings = Settings(sample=args.sample, graph_every=args.graph_every, stats_every=args.stats_every)
    with launch.Interruptions():
        session = launch.new_session(target, args.record, settings=settings, analyzer=analyzer,
                                     control=_control(args))
        code = launch.run(target, session)
        report = args.report
        if report and (ranks := rank_and_world()) is not None:
            report = ranked(Path(report), ranks[0])  # one report per rank, like the records
        return conclude(code, session.path, report, args.fail_on, session.recorder)


def _check_paths(args) -> None:
    """Make --record and --report absolute (the script may chdir) and check them before
    anything runs: one line and status 2 for a path that cannot be written or would replace
    something that is not a record."""
    from .record.paths import check_output, check_record_target

    if args.record:
        args.record = str(check_record_target(args.record, args.overwrite))
    if args.report:
        args.report = str(check_output(args.report, "the report"))


def _cmd_demo(args) -> int:
    from . import demo
    from .outcome import conclude
    from .record.paths import new_record_path

    label = f"demo-{args.bug}" if args.bug else "demo"
    _check_paths(args)
    if not args.headless and _interactive():
        return _under_ui(args, label)
    path = args.record or new_record_path(label)
    session = demo.record(path, args.steps, args.bug, analyzer=_analyzer(args), control=_control(args))
    return conclude(0, session.path, args.report, args.fail_on, session.recorder)


def _cmd_export(args) -> int:
    from .export import export_record
    from .record.reader import open_record

    from .record.paths import check_output

    check_output(args.output, "the diagram")
    with open_record(args.record) as record:
        fmt = export_record(record, args.output, step=args.step, graph=args.graph,
                            depth=args.depth, fmt=args.format, chart=args.chart, steps=args.steps)
    print(inert(f"gradscope: wrote {args.output} ({fmt})"), file=sys.stderr)
    return 0


def _cmd_plugins(args) -> int:
    from . import plugins

    _, infos = plugins.load()
    plugins.print_table(infos)
    return 0


def _cmd_report(args) -> int:
    from . import report
    from .record.paths import check_output
    from .record.reader import open_record
    from .watch import make_analyzer

    if args.output != "-":
        check_output(args.output, "the report")
    records = []
    try:
        records += [open_record(path) for path in args.record]
        if len(records) == 1:
            report.write(records[0], args.output)
        else:
            ranked = report.by_rank(records)
            findings = make_analyzer(set()).ranks(ranked) if ranked else []
            report.write(records, args.output, findings)
    finally:
        for record in records:
            record.close()
    return 0


def _cmd_runs(args) -> int:
    from .errors import RecordError
    from .record.paths import RUNS_DIR, list_records
    from .record.reader import open_record

    paths = list_records()
    if not paths:
        print(f"no records in {RUNS_DIR}/ (gradscope run SCRIPT makes one)", file=sys.stderr)
        return 0
    for path in paths:
        try:
            with open_record(path) as record:
                run = record.run()
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.get("started", 0)))
            line = f"{path}  {started}  {run.get('status', '?'):11} {run.get('steps', 0):6} steps  {run.get('target', '')}"
        except (RecordError, *_DOCTORED) as exc:
            line = f"{path}  unreadable: {_doctored(path, exc)}"
        print(inert(line))
    return 0


#: What a doctored record can make reading raise (bad JSON, nesting too deep, wrong types).
_DOCTORED = (ValueError, RecursionError, TypeError, KeyError, IndexError, AttributeError, sqlite3.Error)


def _doctored(path, exc: BaseException):
    from .errors import RecordError

    if isinstance(exc, RecordError):
        return exc
    return RecordError(f"{path}: corrupt record ({type(exc).__name__}: {str(exc)[:200]})")


class _UsageError(Exception):
    """Wrong arguments: argparse prints the usage and the message, and exits 2."""


_READERS = ("report", "export", "runs", "view")


def _records(args) -> list[str]:
    record = getattr(args, "record", None) or ["record"]
    return record if isinstance(record, list) else [record]


def main(argv: list[str] | None = None) -> int:
    from .errors import GradscopeError

    parser = _parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    if args.command is None:
        parser.print_help()
        return 2
    args.raw = raw[raw.index(args.command) + 1:]
    try:
        commands = {"run": _cmd_run, "demo": _cmd_demo, "report": _cmd_report, "runs": _cmd_runs,
                    "plugins": _cmd_plugins, "export": _cmd_export, "view": _cmd_view}
        return commands[args.command](args)
    except _UsageError as exc:
        parser.error(str(exc))
    except GradscopeError as exc:
        print(inert(f"gradscope: error: {exc}"), file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1
    except OSError as exc:  # an output that could not be written after all (disk full...)
        if args.command not in ("report", "export"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(inert(f"gradscope: error: {where}{exc.strerror or exc}"), file=sys.stderr)
        return 2
    except _DOCTORED as exc:
        if args.command not in _READERS:
            raise
        print(inert(f"gradscope: error: {_doctored(' '.join(_records(args)), exc)}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradscope: interrupted", file=sys.stderr)
        return 130
