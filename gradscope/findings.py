"""A finding: what a check concluded, where, when, on which evidence, and how to fix it.

This module owns severities: their names, and their order (`severity_rank`, `at_least`).
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field

#: most severe first
SEVERITIES = ("error", "warning", "info")


def severity_rank(severity: str) -> int:
    """0 for the most severe; sorting by it lists errors first. Unknown names rank last."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def at_least(severity: str, threshold: str) -> bool:
    """Whether `severity` is `threshold` or worse (``at_least("error", "warning")``)."""
    return severity_rank(severity) <= severity_rank(threshold)


@dataclass(frozen=True)
class Finding:
    """One conclusion of a check.

    `check` is the check id (``dead-relu``); `severity` one of ``error``, ``warning``, ``info``;
    `subject` the qualified name of the module, parameter or op it is about; `step` the step it
    was seen at; `message` one sentence for a person; `evidence` the numbers behind it; `hint`
    how to fix it. The record keeps one row per (check, subject) with a count and the first and
    last step, so a check may report the same thing every step without flooding anyone.
    """

    check: str
    severity: str
    subject: str
    step: int | None
    message: str
    evidence: dict = field(default_factory=dict)
    hint: str = ""

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def internal_error(where: str, exc: BaseException, step: int | None = None) -> dict:
    """A failure inside gradscope, as a finding (training goes on)."""
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return {
        "check": "internal-error",
        "severity": "warning",
        "subject": where,
        "step": step,
        "message": f"gradscope failed in {where}: {type(exc).__name__}: {exc}",
        "evidence": {"exception": type(exc).__name__, "where": f"{where}{at}"},
        "hint": "Training was not affected; this part of gradscope is off for the failing item. "
        "Please report it with the evidence.",
    }
