"""The verdict of ``signround verify``, shared by safetensors checkpoints (``verify.py``) and GGUF files.

Our own loader agreeing with itself proves nothing about a file, so a run is PASS only when a loader
other than signround's ran and agreed; otherwise it is NOT VERIFIED (not ok) and says which loaders
were unavailable and why. Every loader gets a ``LoaderStatus`` in the report.
"""

from __future__ import annotations

from enum import Enum

from .errors import EXIT_CHECK_FAILED

__all__ = ["OURS", "LoaderStatus", "Verdict", "status_lines", "verdict_text"]

OURS = "signround"  # the name of our own loader in every report


class LoaderStatus(str, Enum):
    """What became of one loader in a verify run (values are printed in the report)."""

    REFERENCE = "ran (reference)"
    AGREED = "ran, agreed"
    DISAGREED = "ran, disagreed"
    NOT_COMPARED = "ran, not compared"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"


def status_lines(statuses: "dict[str, tuple[LoaderStatus, str]]") -> list[str]:
    """The "loaders:" block of a report: one line per loader, its status and why."""
    w = max((len(n) for n in statuses), default=0)
    return ["loaders:"] + [f"  {n.ljust(w)}  {s.value}" + (f": {why}" if why else "") for n, (s, why) in statuses.items()]


def verdict_text(failed: bool, verified_by: list[str], ran: list[str], unavailable: dict[str, str]) -> str:
    """FAIL, PASS (naming the loaders that agreed) or NOT VERIFIED (naming those that could not run, and why)."""
    if failed:
        return "FAIL"
    if verified_by:
        return f"PASS (agreeing: {', '.join(verified_by)})"
    who = (f"only {OURS}'s loader ran" if ran == [OURS] else "no loader ran" if not ran
           else f"no two loaders were compared (ran: {', '.join(ran)})")
    why = "; ".join(f"{n} ({r})" for n, r in unavailable.items()) or "none"
    return f"NOT VERIFIED: {who}; unavailable: {why}"


class Verdict:
    """``ok``, ``exit_code`` and ``verdict`` of a report that defines ``failed``, ``verified_by`` (loaders other than
    ours that agreed), ``ran`` and ``unavailable`` (loader -> why)."""

    failed: bool
    verified_by: list[str]
    ran: list[str]
    unavailable: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.verified_by)

    @property
    def exit_code(self) -> int:
        """The command's exit status: 0 when verified, ``EXIT_CHECK_FAILED`` on FAIL and NOT VERIFIED."""
        return 0 if self.ok else EXIT_CHECK_FAILED

    @property
    def verdict(self) -> str:
        return verdict_text(self.failed, self.verified_by, self.ran, self.unavailable)
