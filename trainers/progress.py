"""Where a training run stands, said the way users expect from long work.

nnU-Net logs ``Epoch 7`` at each epoch start: no total, no time left, and on a CPU a minute or more
apart. The POI trainers add, at each epoch end, one line with the epoch and iteration out of the run's
total, the elapsed time, an estimate of the time left and the epoch's mean losses by name (nnU-Net's
``loss`` and every term the method's loss reports, e.g. ``seg_loss``, ``poi_loss``); and, on a
terminal only, a tqdm bar over the iterations of the epoch (a bar is noise in a log file).

The estimate extrapolates the mean epoch time of this run (since its start or resume), so it already
includes validation, checkpoints and augmentation waits.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    """``42s``, ``5m12s``, ``2h03m``; ``?`` for an unknown (NaN) duration."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass
class TrainingProgress:
    """The clock of one training run (a resumed run starts a new clock at its first epoch)."""

    total_epochs: int
    iterations_per_epoch: int
    first_epoch: int  # 0-based epoch this run started (or resumed) at
    started: float = field(default_factory=time.monotonic)
    show_bar: bool = True  # a tqdm bar during each epoch, where stderr is a terminal
    _bar: Optional[tqdm] = field(default=None, init=False, repr=False)

    def epoch_line(self, epoch: int, losses: Mapping[str, float], now: Optional[float] = None) -> str:
        """The line logged when (0-based) ``epoch`` ends, with the epoch's mean ``losses`` by name."""
        now = time.monotonic() if now is None else now
        done = epoch + 1
        elapsed = now - self.started
        run_epochs = done - self.first_epoch
        left = elapsed / run_epochs * (self.total_epochs - done) if run_epochs > 0 else float("nan")
        iterations = self.iterations_per_epoch
        text = (f"epoch {done}/{self.total_epochs} (iteration {done * iterations}/{self.total_epochs * iterations})"
                f" | elapsed {format_duration(elapsed)} | about {format_duration(left)} left")
        if losses:
            text += " | " + ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
        return text

    def start_epoch(self, epoch: int) -> None:
        """Open the bar over the iterations of (0-based) ``epoch`` (nothing off a terminal)."""
        self.close_bar()
        if self.show_bar and sys.stderr.isatty():
            self._bar = tqdm(total=self.iterations_per_epoch, desc=f"epoch {epoch + 1}/{self.total_epochs}",
                             unit="it", leave=False, file=sys.stderr)

    def step(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self._bar.update(1)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
