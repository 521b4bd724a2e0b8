"""The short text summary printed to stderr at the end of a headless run."""

from __future__ import annotations

from .findings import SEVERITIES
from .record.reader import Record


def summarize_record(record: Record) -> str:
    """A few lines: steps, parameters, optimizers, findings by severity, the record path."""
    run = record.run()
    findings = record.findings()
    counts = {s: sum(1 for f in findings if f["severity"] == s) for s in SEVERITIES}
    params = record.parameters()
    lines = [
        f"gradscope: {run.get('steps', 0)} steps, {len(params)} parameters, "
        f"{len(record.optimizers())} optimizers; findings: "
        + ", ".join(f"{counts[s]} {s}" for s in SEVERITIES)
    ]
    for severity in SEVERITIES:
        for f in findings:
            if f["severity"] == severity:
                where = f" (step {f['step']}" + (
                    f"..{f['last_step']}, {f['count']}x)" if f["count"] > 1 else ")"
                ) if f["step"] is not None else ""
                lines.append(f"  {severity:7} {f['check']} {f['subject']}{where}: {f['message']}")
    lines.append(f"gradscope: record {record.path}")
    return "\n".join(lines)
