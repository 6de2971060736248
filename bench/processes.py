"""Whole-process comparisons: what a user at a terminal waits for, and how much
memory a build takes.

Sections 6-8 of ``python -m bench.run``. Each measure is a new Python process, as
``python -m flows.build`` and a plain script are, started side by side against the
same engine (the test double of ``bench.run``) and alternated run by run:

6. main job no-op: the README's main job (``python -m flows.build``, no
   ``PREFECT_API_URL``: the local API of ``flows/local_api.py``) rebuilding an
   unchanged app, against Dagger's guide script (``bench/guide.py``) rerun on the
   same unchanged source. Also: the same with Prefect's temporary server per
   process (``GOBUILD_LOCAL_API=0``), and the very first build on a fresh
   ``PREFECT_HOME`` (database created, local server started, app compiled).
7. one-line change: the guide's script as written (``golang:latest``, no Go cache
   volumes) against the main job, each on its own copy of the app with the same
   new line, so both really build.
8. memory: peak RSS of the main job's process (its own ``VmHWM``) for
   the app's no-op build and for an app whose binary embeds 20 MB of random data,
   built, then rebuilt from Prefect's cache: what the binary costs in memory,
   counted in copies of the binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.run import Results

ROOT = Path(__file__).resolve().parents[1]
TARGET_MAIN_JOB_RATIO = 2.0
BIG_BINARY_BYTES = 20 * 1024 * 1024
MB = 1_000_000


@dataclass
class Proc:
    seconds: float
    max_rss_kb: int
    stdout: str


# Runs a module as ``python -m`` would, then writes the process's own peak RSS
# (VmHWM of its memory map) to a file. Not ``wait4``'s ru_maxrss: Linux carries the
# forking parent's peak across exec into it, and this benchmark's process, with
# the engine and a Prefect API in it, is larger than the build it measures.
PEAK_RSS_RUNNER = """
import atexit, runpy, sys
def _peak(path=sys.argv[1]):
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(path, "w").write(line.split()[1])
atexit.register(_peak)
module = sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_process(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> Proc:
    """Run ``python -m MODULE ARGS...`` (``args``) to the end; its wall time and its
    own peak RSS (the detached local API server is a process of its own)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    assert args[1] == "-m", args
    rss_file = log.with_suffix(".rss")
    wrapped = [args[0], "-c", PEAK_RSS_RUNNER, str(rss_file), *args[2:]]
    with open(log, "w") as err, open(log.with_suffix(".out"), "w") as out:
        started = time.perf_counter()
        proc = subprocess.run(wrapped, env=env, cwd=cwd, stdout=out, stderr=err, check=False)
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args[:4])} failed ({proc.returncode}): {log.read_text()[-2000:]}"
        )
    rss = int(rss_file.read_text()) if rss_file.exists() else 0
    return Proc(seconds, rss, log.with_suffix(".out").read_text())


class Processes:
    """The two commands under comparison, with their environment."""

    def __init__(self, app: Path, work: Path) -> None:
        self.app = app
        self.work = work / "processes"
        self.work.mkdir(parents=True, exist_ok=True)
        self.home = self.work / "prefect-home"
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
        self.env = {
            **base,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        }
        self._n = 0

    def _log(self, label: str) -> Path:
        self._n += 1
        return self.work / "logs" / f"{self._n:03d}-{label}.err"

    def main_job(self, src: Path, label: str, **env: str) -> Proc:
        output = self.work / "out" / f"{src.name}.oci.tar"
        args = [sys.executable, "-m", "flows.build", str(src), "--output", str(output)]
        return run_process(args, {**self.env, **env}, ROOT, self._log(label))

    def guide(self, src: Path, label: str) -> Proc:
        output = self.work / "out" / f"guide-{src.name}.oci.tar"
        output.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "bench.guide", str(src), str(output)]
        return run_process(args, self.env, ROOT, self._log(label))

    def copy_with_new_line(self, label: str, line: str) -> Path:
        dest = self.work / "src" / label
        shutil.copytree(self.app, dest)
        main = dest / "main.go"
        main.write_text(main.read_text() + f"\n// {line}\n")
        return dest

    def stop_local_api(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "flows.local_api", "stop"],
            env=self.env, cwd=ROOT, capture_output=True, timeout=60, check=False,
        )  # fmt: skip


def _median(xs: list[float]) -> float:
    from bench.run import median

    return median(xs)


def _secs(xs: list[float]) -> str:
    from bench.run import secs

    return secs(xs)


def section_main_job(procs: Processes, runs: int, res: Results) -> None:
    """6: the main job's no-op rebuild against the guide script's rerun."""
    src = procs.copy_with_new_line("noop-app", "bench: main job no-op")
    first = procs.main_job(src, "first-fresh-home")  # creates the DB, starts the local API
    procs.guide(src, "guide-untimed")  # the engine has this source's build from now on
    main: list[float] = []
    guide: list[float] = []
    temporary: list[float] = []
    for i in range(runs):
        steps = [
            lambda: main.append(procs.main_job(src, "noop").seconds),
            lambda: guide.append(procs.guide(src, "guide-rerun").seconds),
            lambda: temporary.append(
                procs.main_job(src, "noop-temporary", GOBUILD_LOCAL_API="0").seconds
            ),
        ]
        for step in steps if i % 2 == 0 else reversed(steps):
            step()
    ratio = _median(main) / _median(guide)
    sec = "6 main job"
    res.add(sec, "guide script rerun, unchanged source", _secs(guide))
    res.add(sec, "main job no-op, local API (default)", _secs(main))
    res.add(
        sec,
        "ratio main job / guide script",
        f"{ratio:.2f}x",
        f"<= {TARGET_MAIN_JOB_RATIO}x",
        ratio <= TARGET_MAIN_JOB_RATIO,
    )
    res.add(sec, "main job no-op, temporary API per process", _secs(temporary))
    res.add(sec, "main job, first build on a fresh PREFECT_HOME", _secs([first.seconds]))
    res.raw["main_job"] = {
        "main": main,
        "guide": guide,
        "temporary": temporary,
        "first": first.seconds,
    }


def section_one_line_change(procs: Processes, runs: int, res: Results) -> None:
    """7: after a one-line change, the guide's script (no Go caches) against the
    main job (its cache volumes keep Go's build cache; vet and test run too)."""
    main: list[float] = []
    guide: list[float] = []
    for i in range(runs):
        line = f"bench: one-line change {os.getpid()}-{i}"
        main_src = procs.copy_with_new_line(f"change-main-{i}", line)
        guide_src = procs.copy_with_new_line(f"change-guide-{i}", line)
        steps = [
            lambda src=main_src: main.append(procs.main_job(src, "change").seconds),
            lambda src=guide_src: guide.append(procs.guide(src, "guide-change").seconds),
        ]
        for step in steps if i % 2 == 0 else reversed(steps):
            step()
    sec = "7 one-line change"
    res.add(sec, "guide script as written (golang:latest, no caches)", _secs(guide))
    res.add(sec, "main job (vet, test, build; Go caches kept)", _secs(main))
    res.add(sec, "ratio main job / guide script", f"{_median(main) / _median(guide):.2f}x")
    res.raw["one_line_change"] = {"main": main, "guide": guide}


def write_big_binary_app(dest: Path, size: int = BIG_BINARY_BYTES) -> Path:
    """A Go program whose binary carries ``size`` random (incompressible) bytes."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "go.mod").write_text("module example.com/bigbin\n\ngo 1.22\n")
    (dest / "blob.bin").write_bytes(os.urandom(size))
    (dest / "main.go").write_text(
        'package main\n\nimport (\n\t_ "embed"\n\t"fmt"\n)\n\n'
        '//go:embed blob.bin\nvar blob []byte\n\nvar version = "dev"\n\n'
        'func main() { fmt.Println("bigbin", version, len(blob)) }\n'
    )
    return dest


def section_memory(procs: Processes, res: Results) -> None:
    """8: peak RSS of the build process, and what a 20 MB binary adds to it.

    Like is compared with like: a build against the small app's build (both use
    the engine and import the Dagger SDK), a rebuild served from cache against the
    small app's no-op (neither does)."""
    small_src = procs.copy_with_new_line("memory-small", "bench: memory")
    small_built = procs.main_job(small_src, "memory-small-build")
    small = procs.main_job(small_src, "memory-small-noop")
    big_src = write_big_binary_app(procs.work / "src" / "bigbin")
    built = procs.main_job(big_src, "memory-big-build")
    cached = procs.main_job(big_src, "memory-big-noop")
    binary_mb = BIG_BINARY_BYTES / MB
    sec = "8 memory"
    res.add(sec, "peak RSS, small app, built", f"{small_built.max_rss_kb / 1024:.0f} MiB")
    res.add(sec, "peak RSS, small app, no-op", f"{small.max_rss_kb / 1024:.0f} MiB")
    for label, proc, base, base_label in (
        ("built", built, small_built, "build"),
        ("rebuilt from cache", cached, small, "no-op"),
    ):
        extra = (proc.max_rss_kb - base.max_rss_kb) * 1024 / MB
        copies = round(extra / binary_mb, 1) + 0.0  # no "-0.0"
        res.add(sec, f"peak RSS, 20 MB binary, {label}", f"{proc.max_rss_kb / 1024:.0f} MiB")
        res.add(
            sec,
            f"  over the small app's {base_label}, in binaries",
            f"{copies:.1f} x {binary_mb:.0f} MB",
        )
    server = _local_api_rss(procs.home)
    if server:
        res.notes.append(f"8 memory: the local API server process: {server / 1024:.0f} MiB RSS")
    res.raw["memory"] = {
        "small_built_kb": small_built.max_rss_kb,
        "small_kb": small.max_rss_kb,
        "big_built_kb": built.max_rss_kb,
        "big_cached_kb": cached.max_rss_kb,
    }


def _local_api_rss(home: Path) -> int:
    import json

    try:
        pid = json.loads((home / "gobuild-api.json").read_text())["pid"]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, KeyError):
        pass
    return 0
