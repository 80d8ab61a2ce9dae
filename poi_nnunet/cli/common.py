"""What every command shares: turning user errors into one clear message and an exit code."""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, Optional, Sequence, Union

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


DEVICE_CHOICES = ("auto", "cuda", "cpu", "mps")


def add_device_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``-device``, the same in every command: ``auto`` (the default) takes a CUDA GPU where there is one,
    else the CPU, so the README's commands run as written on a machine without a GPU."""
    parser.add_argument("-device", default="auto", choices=DEVICE_CHOICES,
                        help=f"device to {what} (default auto: cuda when a CUDA GPU is available, else cpu; "
                        "the choice is printed; cuda, cpu or mps force one)")


def resolve_device(requested: str) -> str:
    """The device ``-device`` names: ``auto`` becomes ``cuda`` or ``cpu``, said on stdout."""
    if requested != "auto":
        return requested
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = "a CUDA GPU is available" if device == "cuda" else "no CUDA GPU found; -device cuda|mps forces one"
    print(f"device: {device} ({reason})", flush=True)
    return device


def parse_fold(text: str) -> Union[int, str]:
    """``-f``: one of nnU-Net's folds (an integer) or ``all``; anything else is a one-line error."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise PoiNnunetError(f"fold must be an integer or 'all', got {text!r}") from None
