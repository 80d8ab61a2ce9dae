"""User-facing errors.

Every problem a user can cause (a bad file, an unknown dataset) is raised as a
:class:`PoiNnunetError` whose message names the file and what is wrong. The
command-line entry points catch exactly this class, print the message and exit
non-zero, so a user never sees a bare traceback for their own mistake.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

PathLike = Union[str, Path]


class PoiNnunetError(Exception):
    """An error caused by input the user controls; the message is the whole report."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (and, where it applies, one point of it)."""

    file: str
    message: str
    point: Optional[str] = None

    def __str__(self) -> str:
        where = f"{self.file} [{self.point}]" if self.point else self.file
        return f"{where}: {self.message}"


class InvalidInputError(PoiNnunetError):
    """Raised with every problem found, so a user fixes them all in one pass."""

    def __init__(self, problems: Iterable[Problem], headline: str = "invalid input"):
        self.problems = list(problems)
        lines = [f"{headline}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))
