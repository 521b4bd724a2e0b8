"""The end of a run: its JSON report written, its summary printed, and whether a finding
reaches the severity that fails the run (``--fail-on``, exit status 3)."""

from __future__ import annotations

import sys

from . import report, summary
from .errors import GradscopeError, RecordError
from .findings import at_least
from .record.reader import open_record
from .terminal import inert

#: The exit status of a run whose script succeeded but whose findings reach ``--fail-on``.
FAILED_CHECKS = 3


def conclude(code: int, path, report_path=None, fail_on=None, recorder=None) -> int:
    """Write the report and print the summary of the record at `path`; the process's exit
    status: the script's own `code`, or `FAILED_CHECKS` when the script succeeded and a finding
    reaches `fail_on`.

    Runs after the script: a failure here is one line on stderr and never changes the script's
    exit status."""
    failed = _report_and_judge(path, report_path, fail_on, recorder)
    return code or (FAILED_CHECKS if failed else 0)


def _report_and_judge(path, report_path, fail_on, recorder) -> bool:
    try:
        record = open_record(path)
    except RecordError as exc:
        print(inert(f"gradscope: error: {exc}; no summary or report"), file=sys.stderr)
        return False
    with record:
        if report_path:
            try:
                report.write(record, report_path)
            except (OSError, GradscopeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                print(inert(f"gradscope: error: the report was not written ({reason})"), file=sys.stderr)
        print(summary.summarize_record(record, recorder), file=sys.stderr)
        if fail_on is None:
            return False
        found = [*record.findings(), *getattr(recorder, "unrecorded_findings", ())]
        return any(at_least(f["severity"], fail_on) for f in found)
