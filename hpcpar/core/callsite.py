"""Debug mode's call sites: which function outside hpcpar made a collective call."""

from __future__ import annotations

import os
import sys
import zlib
from types import FrameType

from .cache import BoundedCache

__all__ = ["caller_site", "site_code"]

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the hpcpar package
_NAMES: BoundedCache = BoundedCache(4096)  # code object -> "file:function", for code outside hpcpar


def caller_site() -> str:
    """``file:function`` of the nearest caller outside the hpcpar package. **Local**.

    Walks up from the caller's caller (about a microsecond); ``"?"`` when every
    frame is inside hpcpar.
    """
    f: FrameType | None = sys._getframe(2)
    while f is not None:
        code = f.f_code
        site = _NAMES.get(code)
        if site is not None:
            return site
        if not code.co_filename.startswith(_HERE):
            return _NAMES.put(code, f"{os.path.basename(code.co_filename)}:{code.co_name}")
        f = f.f_back
    return "?"


def site_code(site: str | None) -> int:
    """A non-zero 32-bit code of ``site`` for the call header; 0 for None (debug mode off)."""
    return 0 if site is None else (zlib.crc32(site.encode()) or 1)
