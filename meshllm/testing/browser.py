"""A real browser for the dashboard's tests and screenshots: Debian's chromium, driven
by Playwright (never a browser Playwright would download)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
LAUNCH_ARGS = ("--no-sandbox", "--disable-dev-shm-usage")  # root in CI; small /dev/shm


def find_chromium() -> Path | None:
    """``$MESHLLM_CHROMIUM``, else Debian's chromium binary (its ``/usr/lib`` one: the
    ``/usr/bin`` wrapper is a shell script); None when none is installed."""
    given = os.environ.get("MESHLLM_CHROMIUM")
    if given:
        return Path(given)
    for candidate in CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("chromium")
    return Path(found) if found else None
