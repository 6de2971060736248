"""Screenshots of what users see of the deployments in both Prefect UIs, for a person.

    .venv/bin/python scripts/ui_screenshots.py [DIR]     # default: build/ui-screenshots

The pages worth looking at (the on-demand deployment's custom-run form, before and
after submitting it without a source, and each deployment's description, in the V1 UI
at ``/`` and the V2 UI at ``/v2``) need a Prefect server with its UIs, the served
deployments, and headless Chromium. ``tests/test_ui.py`` sets all of that up and
checks the pages' text, so this runs it with ``GOBUILD_UI_SCREENSHOTS=DIR`` rather
than repeating it: the screenshots are those of the assertions, and a failed check is
reported with them. Exits with pytest's status and lists the PNG files.

Needs Debian's ``chromium`` (``scripts/test.sh`` installs it) and the test extras
(``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/ui_screenshots.py", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "folder",
        nargs="?",
        type=Path,
        default=ROOT / "build" / "ui-screenshots",
        help="where to write the PNG files (default: build/ui-screenshots)",
    )
    args = ap.parse_args(argv)
    folder: Path = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBUILD_UI_SCREENSHOTS": str(folder)}
    started = time.time()
    status = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ui.py"],
        cwd=ROOT,
        env=env,
    )
    shots = sorted(p for p in folder.glob("*.png") if p.stat().st_mtime >= started)
    print(f"{len(shots)} screenshots in {folder}:")
    for shot in shots:
        print(f"  {shot}")
    return status


if __name__ == "__main__":
    sys.exit(main())
