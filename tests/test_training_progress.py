"""The progress line a training run logs at each epoch end (trainers/progress.py), against values worked
out by hand; the line in a real run's log is checked in test_train.py."""
from __future__ import annotations

import math

from trainers.progress import TrainingProgress, format_duration


def test_durations_read_as_a_person_writes_them() -> None:
    assert [format_duration(s) for s in (0, 42.4, 60, 312, 3599.6, 7380)] == ["0s", "42s", "1m00s", "5m12s",
                                                                             "1h00m", "2h03m"]
    assert format_duration(math.nan) == "?"


def test_a_resumed_run_estimates_the_time_left_from_its_own_epochs() -> None:
    """Resumed at epoch 2 (0-based) of 10, 25 iterations each, 60 s after its start epoch 4 ends: three
    epochs of this run took 20 s each, five are left: 100 s."""
    progress = TrainingProgress(10, 25, first_epoch=2, started=100.0, show_bar=False)
    line = progress.epoch_line(4, {"loss": 0.81234, "poi_loss": 0.2}, now=160.0)
    assert line == ("epoch 5/10 (iteration 125/250) | elapsed 1m00s | about 1m40s left | loss 0.8123, "
                    "poi_loss 0.2")


def test_the_last_epoch_has_nothing_left_and_no_losses_leave_no_trailing_separator() -> None:
    progress = TrainingProgress(3, 4, first_epoch=0, started=0.0, show_bar=False)
    assert progress.epoch_line(2, {}, now=9.0) == "epoch 3/3 (iteration 12/12) | elapsed 9s | about 0s left"
