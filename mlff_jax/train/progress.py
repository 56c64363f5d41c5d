"""A progress bar with the losses: ``rich`` on a terminal when installed, else plain lines
(logs, CI, remote runs: one line every ``log_every`` steps)."""

from __future__ import annotations

import sys
import time


class ProgressReporter:
    def __init__(self, total_steps: int, log_every: int, log=print):
        self.total, self.log_every, self.log = total_steps, log_every, log
        self.last_logged, self.note_text, self.t0 = 0, "", time.perf_counter()
        self._rich = None
        if sys.stdout.isatty():
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

                self._rich = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                      TimeElapsedColumn(), TextColumn("{task.fields[text]}"))
                self._task = self._rich.add_task("train", total=total_steps, text="")
                self._rich.start()
            except ImportError:
                self._rich = None

    def update(self, step: int, **values: float) -> None:
        text = " ".join(f"{k} {v:.3g}" for k, v in values.items())
        if self._rich is not None:
            self._rich.update(self._task, completed=step, text=f"{text} | {self.note_text}")
        elif step - self.last_logged >= self.log_every:
            self.last_logged = step
            self.log(f"[train] step {step} ({time.perf_counter() - self.t0:.0f} s): {text} | {self.note_text}")

    def note(self, text: str) -> None:
        """Latest validation result, shown next to the losses."""
        self.note_text = text

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
