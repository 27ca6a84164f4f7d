"""Running whole processes and measuring them: one process (os.wait4, rusage), the noise guard, the alternated
rounds of a section (Runner), and what a measured command holds (Spec, Run) with the statistics taken from it."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .paths import ROOT


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tail(text: str, n: int) -> str:
    return text[-n:].strip()


def child_env(smoke: bool) -> dict:
    env = dict(os.environ)
    # Both cores for torch, in every child alike. The smoke run (CI, tests) keeps a thread limit the caller
    # set, as tests share the machine.
    if not smoke:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(name, None)
    env.pop("SDCLI_DEBUG", None)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- one process ----------------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    rss_kib: int  # peak resident set size of the child (ru_maxrss, KiB on Linux)
    rc: int
    stdout: str
    stderr: str
    cpu_s: float = 0.0  # user + system CPU seconds of the child
    other_cpu_s: Optional[float] = None  # CPU seconds other processes used meanwhile (noise indicator)


def busy_cpu_seconds() -> Optional[float]:
    """CPU seconds spent busy on the whole machine since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_once(argv: list[str], env: dict, timeout: float) -> Run:
    """One whole process: wall time around it, exit code and peak RSS from os.wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0 = busy_cpu_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=str(ROOT))
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C / SIGTERM of the harness: do not leave the child running
            proc.kill()
            proc.wait()
            raise
        finally:
            killer.cancel()
        seconds = time.perf_counter() - t0
        busy1 = busy_cpu_seconds()
        proc.returncode = rc = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
        cpu = usage.ru_utime + usage.ru_stime
        other = max(0.0, busy1 - busy0 - cpu) if busy0 is not None and busy1 is not None else None
        out.seek(0)
        err.seek(0)
        return Run(seconds, usage.ru_maxrss, rc, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"), cpu, other)


# --- a measured command and its statistics --------------------------------------------------------------

@dataclass
class Spec:
    """One measured command (or a group of commands whose times add up, e.g. 8 single-prompt runs)."""

    key: str
    label: str
    make: Callable[[int], list[list[str]]]  # run number -> the commands of that run
    shown: str  # the command as the report shows it
    expect_rc: int = 0
    runs: list[Run] = field(default_factory=list)
    discarded: list[Run] = field(default_factory=list)  # noisy runs measured again

    def seconds(self) -> list[float]:
        return [r.seconds for r in self.runs]

    def rss(self) -> list[int]:
        return [r.rss_kib for r in self.runs]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.rc == self.expect_rc for r in self.runs)

    def median(self) -> float:
        return statistics.median(self.seconds())

    def stderr0(self) -> str:
        return self.runs[0].stderr if self.runs else ""

    def as_json(self) -> dict:
        return {"label": self.label, "command": self.shown, "expect_rc": self.expect_rc,
                "seconds": [round(s, 4) for s in self.seconds()], "rss_kib": self.rss(),
                "cpu_s": [round(r.cpu_s, 3) for r in self.runs],
                "other_cpu_s": [None if r.other_cpu_s is None else round(r.other_cpu_s, 2) for r in self.runs],
                "rc": [r.rc for r in self.runs],
                "median_s": round(self.median(), 4) if self.runs else None,
                "discarded_noisy_s": [round(r.seconds, 3) for r in self.discarded],
                "stderr_tail": tail(self.stderr0(), 600) if self.runs and not self.ok else None}


def ratio(a: Spec, b: Spec) -> Optional[float]:
    if not a.runs or not b.runs or not b.median():
        return None
    return round(a.median() / b.median(), 4)


def paired(a: Spec, b: Spec) -> list[float]:
    """Per-round ratios a_i / b_i (the two ran next to each other)."""
    return [round(x / y, 4) for x, y in zip(a.seconds(), b.seconds()) if y]


def parse_float(rx: re.Pattern, text: str) -> Optional[float]:
    m = rx.search(text or "")
    return float(m.group(1)) if m else None


# --- alternated rounds with the noise guard -------------------------------------------------------------

class Runner:
    """Runs the Specs of a section alternated, guarded against noise; collects the unexpected exits."""

    def __init__(self, args):
        self.args = args
        self.env = child_env(args.smoke)
        self.failures: list[str] = []
        self.waited_s = 0.0

    def alternate(self, specs: list[Spec], runs: int, guard: bool = True) -> None:
        """A B C A B C ...: every round runs each command once, in the same order.

        With ``guard`` (and --max-noise > 0), each run waits for a quiet machine first, and a run during which
        other processes used more than --max-noise cores is discarded and repeated (up to --retries times)."""
        a = self.args
        guard = guard and a.max_noise > 0
        for i in range(runs):
            for spec in specs:
                for attempt in range(a.retries + 1 if guard else 1):
                    if guard:
                        self.wait_quiet()
                    run = self._run_spec(spec, i)
                    noisy = guard and run.other_cpu_s is not None and run.other_cpu_s > a.max_noise * run.seconds
                    flag = "" if run.rc == spec.expect_rc else f"  UNEXPECTED exit {run.rc}: {tail(run.stderr, 300)}"
                    noise = f", others used {run.other_cpu_s:.1f} CPU-s meanwhile" if run.other_cpu_s is not None else ""
                    last_try = attempt == a.retries
                    verdict_ = " -> discarded (noisy), again" if noisy and not last_try else \
                        " -> kept although noisy (out of retries)" if noisy else ""
                    log(f"  [{i + 1}/{runs}] {spec.label}: {run.seconds:.3f}s (CPU {run.cpu_s:.1f}s), rc {run.rc}, "
                        f"peak RSS {run.rss_kib / 1024:.0f} MiB{noise}{flag}{verdict_}")
                    if noisy and not last_try and run.rc == spec.expect_rc:
                        spec.discarded.append(run)
                        continue
                    spec.runs.append(run)
                    break
        for spec in specs:
            if not spec.ok:
                self.failures.append(f"{spec.label}: exit {[r.rc for r in spec.runs]} "
                                     f"(expected {spec.expect_rc}): {tail(spec.stderr0(), 300)}")

    def _run_spec(self, spec: Spec, i: int) -> Run:
        total, rss, cpu, other = 0.0, 0, 0.0, 0.0
        for argv in spec.make(i):  # a group's times add up; it stops at the first unexpected exit
            last = run_once(argv, self.env, self.args.timeout)
            total += last.seconds
            rss = max(rss, last.rss_kib)
            cpu += last.cpu_s
            other = None if other is None or last.other_cpu_s is None else other + last.other_cpu_s
            if last.rc != spec.expect_rc:
                break
        return Run(total, rss, last.rc, last.stdout, last.stderr, cpu, other)

    def wait_quiet(self) -> None:
        """Wait (up to --wait-quiet seconds) until other processes use at most --max-noise cores."""
        a = self.args
        deadline = time.monotonic() + a.wait_quiet
        waited = 0.0
        while True:
            b0 = busy_cpu_seconds()
            time.sleep(1.0)
            b1 = busy_cpu_seconds()
            if b0 is None or b1 is None or b1 - b0 <= a.max_noise or time.monotonic() > deadline:
                break
            waited += 1.0
        if waited >= 5:
            log(f"  waited {waited:.0f}s for the machine to be quiet")
        self.waited_s += waited
