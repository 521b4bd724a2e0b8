"""The short text summary printed to stderr at the end of a headless run.

Everything from the record is printed inert (`gradscope.terminal.inert`). Steps missing from
the record are always said, with the reason: dropped while the recorder lagged, or judged in
memory after a write error stopped the recording (those findings are listed too).
"""

from __future__ import annotations

from .findings import SEVERITIES
from .record.reader import Record
from .terminal import inert


def _finding_line(f: dict, note: str = "") -> str:
    where = f" (step {f['step']}" + (
        f"..{f['last_step']}, {f['count']}x)" if f.get("count", 1) > 1 else ")"
    ) if f.get("step") is not None else ""
    return inert(f"  {f['severity']:7} {f['check']} {f['subject']}{where}: {f['message']}{note}")


def summarize_record(record: Record, recorder=None) -> str:
    """A few lines: steps, parameters, optimizers, findings by severity, the record path.

    `recorder` is the run's `RecordWriter` when the summary is printed by the process that
    wrote the record: it knows what could not be written."""
    run = record.run()
    findings = record.findings()
    unrecorded = list(getattr(recorder, "unrecorded_findings", ()))
    counts = {s: sum(1 for f in findings + unrecorded if f["severity"] == s) for s in SEVERITIES}
    params = record.parameters()
    steps = run.get("steps", 0)
    if recorder is not None and recorder.stopped is not None:
        steps = recorder.steps
    lines = [
        f"gradscope: {steps} steps, {len(params)} parameters, "
        f"{len(record.optimizers())} optimizers; findings: "
        + ", ".join(f"{counts[s]} {s}" for s in SEVERITIES)
    ]
    dropped = recorder.dropped if recorder is not None else run.get("dropped") or {}
    if not dropped and run.get("dropped_steps"):
        dropped = {"reason not recorded": run["dropped_steps"]}
    if dropped:
        lines.append("gradscope: " + "; ".join(f"{n} steps dropped ({why})" for why, n in dropped.items())
                     + ": they are not in the record")
    stopped = recorder.stopped if recorder is not None else run.get("recording_stopped")
    if stopped:
        at = recorder.stopped_at if recorder is not None else run.get("recording_stopped_at")
        lines.append(inert(f"gradscope: recording stopped at step {at} ({stopped}); "
                           "later steps were judged but not recorded"))
    for severity in SEVERITIES:
        lines += [_finding_line(f) for f in findings if f["severity"] == severity]
        lines += [_finding_line(f, " [not in the record]") for f in unrecorded if f["severity"] == severity]
    lines.append(inert(f"gradscope: record {record.path}"))
    return "\n".join(lines)
