"""The end of a study: its Pareto front as a table (printed and ``pareto.csv``) and a plot (``pareto.png``).

With two objectives the front is the complete trials no other trial beats on both (Optuna's
``best_trials``); with one it is the best trial. The plot shows every complete trial and marks the front
(two objectives: TRE against Dice; one: the objective per trial with the running best). Figures are drawn
in the evaluation plots' fixed style (:mod:`poi_nnunet.evaluation.plot_style`), whatever nnU-Net's training
left in matplotlib's global state.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List

from ..atomic import atomic_write_text
from ..evaluation.plot_style import render
from .objectives import Objective


def complete_trials(study: Any) -> List[Any]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def pareto_rows(study: Any, objectives: List[Objective], names: List[str]) -> List[Dict[str, Any]]:
    """One row per trial of the front, best first by the first objective: trial, objectives, share of points
    found, the searched values."""
    front = sorted(study.best_trials, key=lambda t: t.values[0] * (1 if objectives[0].direction == "minimize" else -1))
    rows = []
    for t in front:
        row: Dict[str, Any] = {"trial": t.number}
        row.update({o.name: v for o, v in zip(objectives, t.values)})
        row["points_found"] = t.user_attrs.get("points_found")
        row.update({n: t.params.get(n) for n in names})
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: List[Dict[str, Any]], objectives: List[Objective], title: str) -> str:
    """A fixed-width table: header names as in the CSV, ``-`` for a value a trial lacks."""
    if not rows:
        return f"{title}: no complete trial yet"
    columns = list(rows[0])
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    directions = ", ".join(f"{o.label} {o.direction[:-1]}ed" for o in objectives)
    lines = [f"{title} ({directions}):", "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_plot(path: Path, study: Any, objectives: List[Objective], title: str) -> None:
    """``pareto.png``: every complete trial, the front marked and numbered."""
    trials = complete_trials(study)
    front = {t.number for t in study.best_trials}

    def axis_label(o: Objective) -> str:
        better = "lower" if o.direction == "minimize" else "higher"
        return f"{o.label}{' (' + o.unit + ')' if o.unit else ''}, {better} is better"

    def draw(fig) -> None:
        ax = fig.add_subplot(1, 1, 1)
        if len(objectives) == 2:
            x = [t.values[0] for t in trials]
            y = [t.values[1] for t in trials]
            ax.scatter(x, y, color="0.6", s=18, label="complete trials")
            on = sorted((t for t in trials if t.number in front), key=lambda t: t.values[0])
            ax.plot([t.values[0] for t in on], [t.values[1] for t in on], "o-", color="tab:red", ms=6,
                    label="Pareto front")
            for t in on:
                ax.annotate(str(t.number), (t.values[0], t.values[1]), textcoords="offset points", xytext=(4, 4))
            ax.set_xlabel(axis_label(objectives[0]))
            ax.set_ylabel(axis_label(objectives[1]))
        else:
            o = objectives[0]
            numbers = [t.number for t in trials]
            values = [t.values[0] for t in trials]
            ax.plot(numbers, values, "o", color="0.6", ms=4, label="complete trials")
            running, best = [], None
            for v in values:
                best = v if best is None or o.better(v, best) else best
                running.append(best)
            ax.step(numbers, running, where="post", color="tab:red", label="best so far")
            ax.set_xlabel("trial")
            ax.set_ylabel(axis_label(o))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if trials:
            ax.legend(loc="best")

    render(path, (7.0, 5.0), 10.0, draw)


def write_report(folder: Path, study: Any, objectives: List[Objective], names: List[str]) -> str:
    """Write ``pareto.csv`` and ``pareto.png`` into ``folder``; return the table to print."""
    rows = pareto_rows(study, objectives, names)
    n = len(complete_trials(study))
    title = f"{'Pareto front' if len(objectives) > 1 else 'best trial'} of study {study.study_name}"
    table = format_table(rows, objectives, f"{title}, {n} complete trial(s)")
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "pareto.csv", rows)
    write_plot(folder / "pareto.png", study, objectives, study.study_name)
    return table
