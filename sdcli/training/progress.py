"""Training progress on stderr: a live bar with the loss on a terminal, a line every few steps otherwise."""

from __future__ import annotations

import time


class TrainProgress:
    def __init__(self, reporter, steps: int, start: int):
        self.reporter, self.steps, self.start = reporter, steps, start
        self.every = max(1, (steps - start) // 20)
        self.t0 = time.monotonic()
        self.bar = None
        if not reporter.quiet and getattr(reporter.stream, "isatty", lambda: False)():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("train", total=steps, completed=start, loss="-")

    def step(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}")
        elif step % self.every == 0 or step == self.steps:
            rate = (time.monotonic() - self.t0) / max(1, step - self.start)
            self.reporter.info(f"step {step}/{self.steps}: loss {loss:.4f} ({rate:.2f}s/step)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
