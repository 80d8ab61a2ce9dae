"""Reading the JSON files a step depends on, with one clear message when one is missing or broken."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import PathLike, PoiNnunetError


def read_json(path: PathLike, missing_hint: str) -> Any:
    """Parse ``path``; a missing file names ``missing_hint`` (what to run), a broken one says why."""
    path = Path(path)
    if not path.is_file():
        raise PoiNnunetError(f"{path}: missing; {missing_hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoiNnunetError(f"{path}: not valid JSON ({exc})") from None
