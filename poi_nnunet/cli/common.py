"""What every command shares: turning user errors into one clear message and an exit code."""
from __future__ import annotations

import functools
import sys
from typing import Callable, Optional, Sequence

from ..errors import PoiNnunetError

EXIT_USER_ERROR = 2


def reports_user_errors(main: Callable[[Optional[Sequence[str]]], int]) -> Callable[[Optional[Sequence[str]]], int]:
    """Wrap a ``main(argv) -> exit code``: a :class:`PoiNnunetError` prints its message, never a traceback."""

    @functools.wraps(main)
    def wrapper(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except PoiNnunetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
