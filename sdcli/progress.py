"""Progress and log reporting on stderr: a live bar on a terminal, plain lines otherwise, silence with --quiet.

The runner calls these methods; it never prints itself. Warnings and errors are shown even when quiet.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from .errors import textsafe


class Reporter:
    """Plain log lines (stderr not a terminal, e.g. cron or CI)."""

    def __init__(self, quiet: bool = False, stream: Optional[TextIO] = None, tag: Optional[str] = None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self.name = f"sdcli[{tag}]" if tag else "sdcli"  # the shard, when processes share a terminal or log

    def _print(self, msg: str) -> None:
        print(textsafe(msg), file=self.stream, flush=True)

    def info(self, msg: str) -> None:
        if not self.quiet:
            self._print(f"{self.name}: {msg}")

    def warn(self, msg: str) -> None:
        self._print(f"{self.name}: warning: {msg}")

    def start(self, total_images: int, total_batches: int, run_total: Optional[int] = None) -> None:
        """``total_images`` to make now; ``run_total``: the images of the whole run (image lines count in it)."""
        self.total = total_images
        self.run_total = run_total or total_images
        self.info(f"generating {total_images} image(s) in {total_batches} batch(es)")

    def batch(self, number: int, total: int, jobs) -> None:
        seeds = ", ".join(str(j.seed) for j in jobs)
        job = jobs[0]
        steps = f"{job.steps} steps"
        if job.strength is not None:
            steps = f"{job.denoising_steps} of {steps} (strength {job.strength})"
        image = f", input {job.inputs.image.path}" if job.inputs is not None else ""
        self.info(f"batch {number}/{total}: {len(jobs)} image(s), {steps}, seeds {seeds}{image}")

    def step(self, done: int, steps: int) -> None:
        pass

    def image(self, index: int, path: Optional[str], seed: int, flagged: bool) -> None:
        where = path if path else "(not saved)"
        self.info(f"image {index + 1}/{self.run_total}: {where} seed {seed}{' [NSFW: replaced by black]' if flagged else ''}")

    def close(self) -> None:
        pass


class LiveReporter(Reporter):
    """A rich progress bar (images and steps of the current batch) for a terminal."""

    def __init__(self, quiet: bool = False, stream: Optional[TextIO] = None, tag: Optional[str] = None):
        super().__init__(quiet, stream, tag)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(file=self.stream, stderr=self.stream is sys.stderr)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.images_task = self.steps_task = None

    def _print(self, msg: str) -> None:
        self.console.print(textsafe(msg), markup=False, highlight=False)

    def start(self, total_images: int, total_batches: int, run_total: Optional[int] = None) -> None:
        self.total = total_images
        self.progress.start()
        self.images_task = self.progress.add_task("images", total=total_images)
        self.steps_task = self.progress.add_task("steps ", total=1)

    def batch(self, number: int, total: int, jobs) -> None:
        self.progress.update(self.steps_task, completed=0, total=jobs[0].steps,
                             description=f"batch {number}/{total}")

    def step(self, done: int, steps: int) -> None:
        self.progress.update(self.steps_task, completed=done, total=steps)

    def image(self, index: int, path: Optional[str], seed: int, flagged: bool) -> None:
        self.progress.advance(self.images_task)
        if flagged:
            self.warn(f"image {index + 1}: flagged by the safety checker, replaced by black")

    def close(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool, stream: Optional[TextIO] = None, tag: Optional[str] = None,
                  live: bool = True) -> Reporter:
    """A live bar on a terminal, else plain lines; ``tag`` names the shard; ``live`` False: plain lines (the
    processes of a launcher share one terminal)."""
    stream = stream or sys.stderr
    if live and not quiet and stream.isatty():
        return LiveReporter(quiet, stream, tag)
    return Reporter(quiet, stream, tag)
