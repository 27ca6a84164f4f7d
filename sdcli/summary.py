"""What a run did: the closing line, the exit code and the ``--json`` summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK


@dataclass
class Summary:
    """What a run did; the CLI prints it (and with --json, this as JSON) and picks the exit code."""

    task: str
    outdir: str
    total: int = 0
    generated: int = 0
    skipped: int = 0  # --resume: already complete
    failed: int = 0
    flagged: int = 0
    unwatermarked: int = 0
    recovered: int = 0  # samples of a killed run recorded in the manifest
    images: list[str] = field(default_factory=list)
    grid: Optional[str] = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    shard: Optional[str] = None  # "2/3": this process made the second of three shares (scale-out)
    merged: Optional[dict[str, Any]] = None  # rank 0 of a launcher: every rank's summary (dist.merge)

    @property
    def status(self) -> str:
        return "interrupted" if self.interrupted else "failed" if self.failed else "ok"

    @property
    def exit_code(self) -> int:
        own = EXIT_INTERRUPTED if self.interrupted else EXIT_FAILURE if self.failed else EXIT_OK
        others = self.merged is not None and self.merged["status"] != "ok"
        return own or (EXIT_FAILURE if others else EXIT_OK)

    def as_json(self) -> dict[str, Any]:
        """This process's ``--json`` summary (rank 0's merged one is printed after it)."""
        import dataclasses

        own = {k: v for k, v in dataclasses.asdict(self).items() if k != "merged"}
        return {"status": self.status, "exit_code": self.exit_code, **own}

    def describe(self) -> str:
        """The closing line: what was done, where."""
        counts = [(self.skipped, "already done"), (self.failed, "failed"), (self.flagged, "flagged by the safety checker")]
        parts = [f"{self.generated} generated", *(f"{n} {label}" for n, label in counts if n)]
        of = f"{self.total}" + (f" (shard {self.shard})" if self.shard else "")
        return (f"{'interrupted' if self.interrupted else 'done'}: {', '.join(parts)} of {of} in "
                f"{self.timings.get('total_s', 0):.1f}s; outputs in {self.outdir}" + (f", grid {self.grid}" if self.grid else ""))
