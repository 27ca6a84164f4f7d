"""The processes of one launcher (torchrun, accelerate launch) after their shares are done: a barrier and the
summaries gathered on rank 0, over torch.distributed with the gloo backend (CPU sockets: it needs no GPU and
works beside any device). Only the end of a run talks: a process renders with no one waiting on it.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional

from . import grids
from .shards import Shard

# How long rank 0 waits at the barrier for the slowest rank (a share may take hours more than another's, e.g.
# after --resume). A rank that dies is noticed sooner: torchrun stops the others when one fails.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


class Group:
    """torch.distributed among a launcher's processes (its RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""

    def __init__(self, shard: Shard):
        self.shard = shard

    @classmethod
    def of(cls, shard: Shard) -> Optional["Group"]:
        """A group when a launcher started this process with a rendezvous address; None otherwise."""
        return cls(shard) if shard.sharded and shard.rendezvous else None

    def gather(self, item: dict[str, Any]) -> Optional[list[dict[str, Any]]]:
        """Wait for every rank; rank 0 gets every rank's ``item`` (in rank order), the others None."""
        import torch.distributed as dist

        created = not dist.is_initialized()
        if created:
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        try:
            rank, size = dist.get_rank(), dist.get_world_size()
            items: Optional[list] = [None] * size if rank == 0 else None
            dist.gather_object(item, items, dst=0)
            return items
        finally:
            if created:
                dist.destroy_process_group()


def merge(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's merged summary: totals over the ranks and each rank's counts (``--json``)."""
    keys = ("total", "generated", "skipped", "failed", "flagged", "unwatermarked", "recovered")
    shards = [{"rank": rank, "shard": it.get("shard"), "status": it.get("status"), "exit_code": it.get("exit_code"),
               **{k: it.get(k, 0) for k in keys}, "error": it.get("error"),
               "generate_s": it.get("timings", {}).get("generate_s")} for rank, it in enumerate(items)]
    statuses = {s["status"] for s in shards}
    status = "failed" if statuses - {"ok", "interrupted"} else "interrupted" if "interrupted" in statuses else "ok"
    return {"merged": True, "status": status, "shards": shards,
            **{k: sum(int(it.get(k) or 0) for it in items) for k in keys},
            "images": [p for it in items for p in it.get("images", [])]}


def finish_group(p, reporter, group: Group, summary) -> None:
    """After the barrier, rank 0 reports the ranks that failed, writes the grid and merges the summaries."""
    items = group.gather(summary.as_json())
    if items is None:
        return
    summary.merged = merge(items)
    for rank, item in enumerate(items):
        if item.get("exit_code"):
            why = item.get("error") or f"{item.get('failed', 0)} image(s) failed"
            reporter.warn(f"rank {rank} (shard {item.get('shard')}) {item.get('status')}: {why}; rerun with --resume "
                          "to finish the set")
    spec = grids.spec_for(p)
    if spec is not None and not any(it.get("interrupted") for it in items):
        summary.grid = grids.report(reporter, p.outdir, spec) or summary.grid
    summary.merged["grid"] = summary.grid
