"""Smoke test of the benchmark: ``python -m bench.run --quick`` runs end to end.

The benchmark is only run by hand, so without this it would rot silently when a
stage's signature or the test engine changes. It checks that every section and
figure is printed and parses as a number; it asserts nothing about the figures
themselves, because timings on a shared CI machine are not a test outcome.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "1 overhead": [
        "plain Dagger script",
        "flow as the CLI starts it, API warm",
        "ratio flow / script",
        "difference flow - script",
        "flow called bare (a deployment's run)",
        "ratio bare flow / script",
        "Prefect's floor: a flow of 4 empty tasks",
        "ratio script + floor / script",
    ],
    "1 cold start": [
        "import prefect",
        "trivial flow, API warm",
        "embedded API, existing DB",
        "embedded API, fresh DB",
    ],
    "2 no-op": ["first build", "second build", "ratio second / first", "compile execs"],
    "3 platforms": [
        "flow, linux/amd64",
        "flow, linux/amd64 + linux/arm64",
        "ratio two / one, flow",
        "plain script, linux/amd64 + linux/arm64",
        "ratio two / one, plain script",
    ],
    "4 digest": ["describe_local", "throughput", "with excludes", "without excludes"],
    "5 round trips": ["plain script", "flow", "extra requests"],
    "6 main job": [
        "guide script rerun",
        "main job no-op, local API",
        "ratio main job / guide script",
        "temporary API per process",
        "first build on a fresh PREFECT_HOME",
    ],
    "7 one-line change": ["guide script as written", "main job", "ratio main job / guide"],
    "8 memory": [
        "peak RSS, small app, built",
        "peak RSS, small app, no-op",
        "20 MB binary, built",
        "rebuilt from cache",
    ],
    "9 together": [
        "builds at once, Prefect's server as it is",
        "builds at once, local API as shipped",
        "ratio as shipped / as it is",
        "requests the server replayed",
    ],
}
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| section"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_quick_benchmark_prints_every_section_with_numbers(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--json", str(out_json)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for needle in ("date:", "cores", "go: go1.", "Dagger TEST DOUBLE"):
        assert needle in text, needle

    rows = table_rows(text)
    for section, measures in EXPECTED.items():
        found = [r for r in rows if r[0] == section]
        assert found, f"section {section!r} missing from:\n{text}"
        for measure in measures:
            matching = [r for r in found if measure in r[1]]
            assert matching, f"{section}: no row for {measure!r}"
            assert NUMBER.search(matching[0][2]), f"{section} / {measure}: {matching[0][2]!r}"
    for row in rows:
        value = NUMBER.search(row[2])
        assert value is not None, row
        float(value.group())
        assert row[4] in ("", "met", "MISSED"), row

    # The engine really compiled, and the no-op rebuild really did nothing.
    payload = json.loads(out_json.read_text())
    first = payload["raw"]["noop"]["first"][0]
    second = payload["raw"]["noop"]["second"][0]
    assert any(e[:2] == ["go", "build"] for e in first["execs"])
    assert second["execs"] == []
    assert payload["table"] == text
