"""Which share of a run this process makes: ``--shard K/N``, ``--shard auto`` (Slurm job arrays, Kubernetes
indexed Jobs), or the rank a launcher sets (torchrun, accelerate, srun, mpirun). Pure: the environment is
passed in.

The unit of the split is the batch (images of one batch are made together, so their pixels never depend on
the split): batch b of the run's plan belongs to shard b mod N. The plan is the same in every process, so the
union of the shards is exactly the one-process run: same jobs, seeds, ids and pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, TypeVar

from .errors import UsageError

T = TypeVar("T")
SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
AUTO_RE = re.compile(r"^\s*auto\s*(?:/\s*(\d+)\s*)?$", re.IGNORECASE)
MAX_SHARDS = 100_000

# (rank, world size, local rank) variables of the launchers, first match wins: torchrun and accelerate's
# GPU launcher (torch.distributed.run); mpirun (accelerate's CPU launcher: Open MPI, Intel MPI / MPICH,
# MVAPICH); srun (a job step's tasks; not SLURM_NTASKS, which a batch script sees too).
LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpirun", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("mpirun", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
    ("srun", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),
)


@dataclass(frozen=True)
class Shard:
    index: int = 0  # 0-based
    count: int = 1
    source: str = ""  # what set it: "--shard", "SLURM_ARRAY_TASK_ID", "torchrun", ...; "" unsharded
    local_rank: Optional[int] = None  # the launcher's process number on this machine (its GPU)
    rendezvous: bool = False  # started together by a launcher that gives torch.distributed an address

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def fraction(self) -> str:
        """As users write it: "2/3" (1-based)."""
        return f"{self.index + 1}/{self.count}"

    @property
    def label(self) -> str:
        return f"shard {self.fraction}"

    def describe(self) -> str:
        via = f" ({self.source}" + (f", local rank {self.local_rank}" if self.local_rank is not None else "") + ")"
        return self.label + (via if self.source else "")

    def share(self, batches: Sequence[T]) -> list[T]:
        """This shard's batches: every count-th one, starting at its index."""
        return list(batches[self.index::self.count])

    @property
    def lock_name(self) -> str:
        """The --resume lock: one per shard (a lone process keeps the one-per-outdir name)."""
        return ".sdcli-resume.lock" if not self.sharded else f".sdcli-resume-{self.index + 1}of{self.count}.lock"


def parse(text: str, env: Mapping[str, str]) -> Shard:
    """``--shard K/N`` (1 <= K <= N), ``--shard auto`` or ``--shard auto/N``."""
    m = SHARD_RE.match(text)
    if m:
        k, n = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= MAX_SHARDS or not 1 <= k <= n:
            raise UsageError(f"--shard {text}: K/N needs 1 <= K <= N <= {MAX_SHARDS} (shards are numbered from 1), "
                             f"e.g. --shard 1/{max(n, 2)}")
        return Shard(k - 1, n, "--shard")
    m = AUTO_RE.match(text)
    if not m:
        raise UsageError(f"--shard {text}: write K/N (this process makes share K of N, e.g. 1/4), auto, or auto/N")
    return _auto(text, int(m.group(1)) if m.group(1) else None, env)


def _int(env: Mapping[str, str], name: str, where: str) -> int:
    value = env.get(name, "").strip()
    if not value.lstrip("-").isdigit():
        raise UsageError(f"--shard {where}: {name}={value!r} is not a whole number")
    return int(value)


def _auto(text: str, count: Optional[int], env: Mapping[str, str]) -> Shard:
    """The index of a Slurm array task (SLURM_ARRAY_TASK_ID, counted from SLURM_ARRAY_TASK_MIN; the count is
    SLURM_ARRAY_TASK_COUNT) or of a Kubernetes indexed Job's pod (JOB_COMPLETION_INDEX, from 0; the count, the
    Job's completions, is not in the environment: --shard auto/N)."""
    if "SLURM_ARRAY_TASK_ID" in env:
        source = "SLURM_ARRAY_TASK_ID"
        step = _int(env, "SLURM_ARRAY_TASK_STEP", text) if env.get("SLURM_ARRAY_TASK_STEP") else 1
        first = _int(env, "SLURM_ARRAY_TASK_MIN", text) if env.get("SLURM_ARRAY_TASK_MIN") else 0
        index = (_int(env, source, text) - first) // max(step, 1)
        if count is None:
            if not env.get("SLURM_ARRAY_TASK_COUNT"):
                raise UsageError(f"--shard {text}: SLURM_ARRAY_TASK_COUNT is not set; use --shard auto/N with N "
                                 "the number of array tasks")
            count = _int(env, "SLURM_ARRAY_TASK_COUNT", text)
    elif "JOB_COMPLETION_INDEX" in env:
        source = "JOB_COMPLETION_INDEX"
        index = _int(env, source, text)
        if count is None:
            raise UsageError(f"--shard {text}: a Kubernetes indexed Job does not say how many pods it has; "
                             "use --shard auto/N with N the Job's completions")
    else:
        raise UsageError(f"--shard {text}: neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX "
                         "(a Kubernetes indexed Job) is set; use --shard K/N")
    if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
        raise UsageError(f"--shard {text}: {source} gives shard {index + 1} of {count}, outside 1..{count}; "
                         f"check the array range or use --shard K/N")
    return Shard(index, count, source)


def from_launcher(env: Mapping[str, str]) -> Optional[Shard]:
    """The rank a launcher set (None: not started by one, or a world of one)."""
    for name, rank_var, size_var, local_var in LAUNCHERS:
        if rank_var in env and size_var in env:
            try:
                rank, size = int(env[rank_var]), int(env[size_var])
                local = int(env[local_var]) if env.get(local_var, "").strip() else None
            except ValueError:
                raise UsageError(f"{rank_var}={env[rank_var]!r}, {size_var}={env[size_var]!r}: the launcher's "
                                 "rank and world size are not whole numbers") from None
            if size <= 1:
                return None
            if not 0 <= rank < size:
                raise UsageError(f"{rank_var}={rank} is outside 0..{size - 1} ({size_var}={size})")
            if name == "torchrun" and ("ACCELERATE_MIXED_PRECISION" in env or "ACCELERATE_DYNAMO_BACKEND" in env):
                name = "accelerate"  # accelerate launch starts its GPU processes through torch.distributed.run
            return Shard(rank, size, name, local, rendezvous=bool(env.get("MASTER_ADDR") and env.get("MASTER_PORT")))
    return None


def detect(option: Optional[str], env: Mapping[str, str]) -> Shard:
    """This process's shard. ``--shard`` under a launcher splits further: shard K/N with W ranks makes share
    (K-1)*W + rank of N*W (a Slurm array of torchrun jobs, say)."""
    outer = parse(option, env) if option else None
    inner = from_launcher(env)
    if outer is None:
        return inner or Shard()
    if inner is None:
        return outer
    return Shard(outer.index * inner.count + inner.index, outer.count * inner.count,
                 f"{outer.source} x {inner.source}", inner.local_rank, inner.rendezvous)
