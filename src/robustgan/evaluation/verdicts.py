"""What a check says: a ``CheckResult`` (pass, warn or skipped, with its numbers), and the
summary of several, for check results in memory and for check.json entries alike."""

from __future__ import annotations

from dataclasses import asdict, dataclass

STATUSES = ("pass", "warn", "skipped")


@dataclass
class CheckResult:
    name: str
    status: str  # "pass" | "warn" | "skipped"
    detail: str
    values: dict

    def as_dict(self) -> dict:
        return asdict(self)


def skipped(name: str, reason: str) -> CheckResult:
    return CheckResult(name, "skipped", f"skipped: {reason}", {"reason": reason})


def overall_status(results) -> str:
    """warn if any check warned, else pass (skipped checks never make it a warn, nor a pass
    of their own: the summary line names them)."""
    return "warn" if any(status_of(r) == "warn" for r in results) else "pass"


def summary_line(results) -> str:
    """e.g. '9 passed, 1 warned (restarts), 2 skipped (transfer: no surrogate; autoattack: --no-autoattack)'."""
    by = {status: [r for r in results if status_of(r) == status] for status in STATUSES}
    parts = [f"{len(by['pass'])} passed"]
    if by["warn"]:
        parts.append(f"{len(by['warn'])} warned ({', '.join(_name(r) for r in by['warn'])})")
    if by["skipped"]:
        reasons = "; ".join(f"{_name(r)}: {_values(r).get('reason', 'not run')}" for r in by["skipped"])
        parts.append(f"{len(by['skipped'])} skipped ({reasons})")
    return ", ".join(parts)


def status_of(result) -> str:
    """A CheckResult's or a check.json entry's status (entries written before statuses existed
    said ``passed`` and marked skips in ``values``: read them as what they were)."""
    if isinstance(result, CheckResult):
        return result.status
    if "status" in result:
        return result["status"]
    return "skipped" if result.get("values", {}).get("skipped") else ("pass" if result.get("passed") else "warn")


def _name(result) -> str:
    return result.name if isinstance(result, CheckResult) else result["name"]


def _values(result) -> dict:
    return result.values if isinstance(result, CheckResult) else result.get("values", {})
