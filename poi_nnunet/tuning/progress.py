"""Where a study stands: one line per finished trial, with the best so far, and a tqdm bar over trials.

``trial 3 (4/12 done): TRE 4.21 mm, Dice 0.873 | best TRE 3.90 mm (trial 1), best Dice 0.880 (trial 2)``

"Done" and the bar count the study's finished trials (complete or pruned), whichever worker ran them,
since ``--trials`` is the study's total. Best values are per objective, over complete trials; with two
objectives no single trial need hold both (the Pareto front at the end shows the trade-off).
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple

from tqdm import tqdm

from .objectives import Objective
from .study import finished_trials


def best_per_objective(trials: List[Any], objectives: List[Objective]) -> List[Optional[Tuple[float, int]]]:
    """Per objective, ``(value, trial number)`` of the best complete trial (None before the first)."""
    best: List[Optional[Tuple[float, int]]] = [None] * len(objectives)
    for t in trials:
        if t.state.name != "COMPLETE" or t.values is None:
            continue
        for i, objective in enumerate(objectives):
            if best[i] is None or objective.better(t.values[i], best[i][0]):
                best[i] = (t.values[i], t.number)
    return best


def trial_line(trial: Any, objectives: List[Objective], done: int, total: int, best) -> str:
    """The line for one finished trial (see the module docstring)."""
    head = f"trial {trial.number} ({done}/{total} done): "
    state = trial.state.name
    if state == "COMPLETE":
        body = ", ".join(o.format(v) for o, v in zip(objectives, trial.values))
        found = trial.user_attrs.get("points_found")
        if found is not None:
            body += f" ({100 * found:.0f}% of points found)"
    elif state == "PRUNED":
        body = f"pruned after epoch {trial.user_attrs.get('pruned_at_epoch', '?')}"
    else:
        body = f"failed ({trial.user_attrs.get('error', 'see the warning above')})"
    bests = [f"best {o.format(b[0])} (trial {b[1]})" for o, b in zip(objectives, best) if b is not None]
    return head + body + (" | " + ", ".join(bests) if bests else "")


class TuneProgress:
    """An Optuna callback that prints :func:`trial_line` and moves the bar; ``close()`` at the end."""

    def __init__(self, study: Any, objectives: List[Objective], total: int, show_bar: bool = True):
        self.objectives = objectives
        self.total = total
        self.states: List[str] = []  # this worker's trials, in order
        self.last_error = ""  # why this worker's last failed trial failed
        done = finished_trials(study)
        self.bar = tqdm(total=total, initial=min(done, total), desc="trials", unit="trial", file=sys.stderr,
                        disable=not show_bar, dynamic_ncols=True)

    def __call__(self, study: Any, trial: Any) -> None:
        self.states.append(trial.state.name)
        if trial.state.name == "FAIL":
            self.last_error = trial.user_attrs.get("error", "see the warning above")
        done = finished_trials(study)
        best = best_per_objective(study.get_trials(deepcopy=False), self.objectives)
        tqdm.write(trial_line(trial, self.objectives, done, self.total, best), file=sys.stdout)
        self.bar.n = min(done, self.total)
        self.bar.refresh()

    def failed_in_a_row(self) -> int:
        """How many of this worker's last trials failed (a reason to stop: see the command)."""
        count = 0
        for state in reversed(self.states):
            if state != "FAIL":
                break
            count += 1
        return count

    def close(self) -> None:
        self.bar.close()
