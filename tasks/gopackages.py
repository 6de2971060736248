"""Which directories of a local Go module hold a program (``package main``).

``go build -o out ./dir`` on a library package does not fail: it writes a package
archive, which an image would then carry as its "binary". Many Go repositories
keep a library at the root and their programs under ``cmd/``, so building the
default ``main_package`` ('.') of such a repository is a likely mistake; it is
caught here, before any engine work, with the main packages the module does have.

Only a sure answer refuses a build: a directory whose every non-test Go file
was read and names another package (files constrained by ``//go:build ignore``,
the convention for generators, are left out as Go leaves them out), or a
directory that is missing or holds no Go file at all, where ``go build`` would
fail after the engine had started (the common case: a module with nothing at
its root but ``cmd/<name>``, built with the default '.'). A file whose package
clause cannot be found makes the answer "unknown", and the build goes on; the
compile stage checks what ``go build`` wrote in any case (:func:`is_program`).

The ``main_package`` parameter's own grammar is here too
(:func:`main_package_syntax`): a directory of the module or an import path.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from tasks.imageref import show

_IGNORE_CONSTRAINT = re.compile(r"^//go:build\s+ignore\s*$|^//\s*\+build\s+ignore\s*$", re.M)
_PACKAGE = re.compile(r"package\s+([A-Za-z_][A-Za-z0-9_]*)")
_HEAD_BYTES = 64 * 1024  # a package clause comes after comments only
_PATH_ELEMENT = re.compile(r"[A-Za-z0-9_.~+-]+")
SCAN_DEPTH = 3
SCAN_DIRS = 2000
SKIP_DIRS = {"vendor", "testdata", "node_modules"}
ELF_MAGIC = b"\x7fELF"
_MAJOR_VERSION = re.compile(r"v(?:[2-9]|[1-9][0-9]+)")  # v2 and up; v0 and v1 are not


def main_package_syntax(value: str) -> str:
    """A ``main_package`` as ``go build`` should get it: a path becomes './path',
    because Go reads a bare 'cmd/x' as a standard-library path; an import path
    (its first element has a dot, as ko and ``go install`` take them) stays one."""
    if not value:
        raise ValueError("must not be empty (use '.' for the module root)")
    if value.startswith("/") or "\\" in value or re.match(r"[A-Za-z]:", value):
        raise ValueError(f"{show(value)} must be a path relative to the module root")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{show(value)} must not contain whitespace")
    segments = value.split("/")
    if ".." in segments:
        raise ValueError(f"{show(value)} must not contain '..' (stay inside the module)")
    if "..." in value:
        raise ValueError(f"{show(value)} is a wildcard; name the one main package to build")
    relative = segments[0] == "."
    if relative:
        segments = segments[1:]
    if segments and segments[-1] == "":
        segments = segments[:-1]
    for segment in segments:
        if segment == "." or not _PATH_ELEMENT.fullmatch(segment):
            raise ValueError(f"{show(value)} is not a valid Go package path")
    if not relative and segments and "." in segments[0].lstrip("."):
        return "/".join(segments)  # an import path: example.com/app/cmd/server
    return "./" + "/".join(segments) if segments else "."


def exec_name(package: str) -> str:
    """The file name ``go build`` and ``go install`` give a package's program: its
    last path element, or the one before a major-version suffix (``example.com/
    tool/v2`` is ``tool``; cmd/go/internal/load ``DefaultExecName``, which the
    go command applies to the import path, so ``./cmd/v2`` is ``cmd`` too)."""
    elements = [e for e in package.split("/") if e not in ("", ".")]
    if len(elements) > 1 and _MAJOR_VERSION.fullmatch(elements[-1]):
        return elements[-2]
    return elements[-1] if elements else ""


def package_name(path: Path) -> str | None:
    """The package a Go file declares, '' for a file Go ignores (``//go:build
    ignore``), None when the clause cannot be found."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES).decode("utf-8", errors="replace").lstrip("\ufeff")
    except OSError:
        return None
    at = 0
    while True:  # skip blanks and comments up to the clause
        while at < len(head) and head[at].isspace():
            at += 1
        if head.startswith("//", at):
            end = head.find("\n", at)
            at = len(head) if end < 0 else end + 1
        elif head.startswith("/*", at):
            end = head.find("*/", at + 2)
            if end < 0:
                return None
            at = end + 2
        else:
            break
    match = _PACKAGE.match(head, at)
    if match is None:
        return None
    return "" if _IGNORE_CONSTRAINT.search(head[:at]) else match.group(1)


def packages_in(directory: Path) -> set[str | None]:
    """The package names of a directory's non-test Go files (see :func:`package_name`);
    ``{""}`` when its only such files are ones Go ignores."""
    names: set[str | None] = set()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return {None}
    ignored = False
    for entry in entries:
        go_file = entry.name.endswith(".go") and not entry.name.endswith("_test.go")
        if go_file and entry.is_file():
            name = package_name(Path(entry.path))
            if name == "":
                ignored = True
            else:
                names.add(name)
    return names or ({""} if ignored else set())


def scanned_dirs(root: Path) -> Iterator[Path]:
    """The directories under ``root`` (itself first), nearest first: what Go's
    ``./...`` would walk (no hidden, ``_``, testdata or vendor directories), and no
    node_modules either, within three levels and 2,000 directories, no symlinks
    followed."""
    queue = deque([(root, 0)])
    visited = 0
    while queue and visited < SCAN_DIRS:
        directory, depth = queue.popleft()
        visited += 1
        yield directory
        if depth >= SCAN_DEPTH:
            continue
        try:
            subdirs = sorted(
                e.path
                for e in os.scandir(directory)
                if e.is_dir(follow_symlinks=False)
                and e.name not in SKIP_DIRS
                and not e.name.startswith((".", "_"))
            )
        except OSError:
            continue
        queue.extend((Path(d), depth + 1) for d in subdirs)


def main_packages(module: Path, limit: int = 5) -> list[str]:
    """Up to ``limit`` main packages of the module (``./cmd/x``), nearest first."""
    found = (d for d in scanned_dirs(module) if "main" in packages_in(d))
    rels = (d.relative_to(module).as_posix() for d in found)
    return ["." if rel == "." else f"./{rel}" for rel in islice(rels, limit)]


def check_main_package(module: Path, main_package: str) -> None:
    """Raise ValueError when ``main_package`` surely holds no program: a library
    (``go build`` would write its archive without a word), or a directory that is
    missing or holds no Go file (``go build`` would fail, but only once the engine
    runs it). The message names the module's main packages, so the fix is in it.

    Go files that only ``//go:build ignore`` keeps out are left to ``go build``:
    the build's own tags could name ``ignore``."""
    directory = module / main_package
    if not directory.is_dir():
        raise ValueError(f"{main_package!r} is not a directory of the module{_hint(module)}")
    names = packages_in(directory)
    if not names:
        tests_only = any(p.name.endswith("_test.go") for p in directory.glob("*.go"))
        what = "only Go test files" if tests_only else "no Go files"
        raise ValueError(f"{main_package!r} holds {what}{_hint(module)}")
    if "main" in names or None in names or "" in names:
        return
    found = ", ".join(sorted(n for n in names if n))
    raise ValueError(
        f"{main_package!r} is package {found}, not a main package{_hint(module, main_package)}"
    )


def _hint(module: Path, main_package: str = "") -> str:
    others = [p for p in main_packages(module) if p != main_package]
    if not others:
        return " (the module has no main package within three levels)"
    return f"; main packages in this module: {', '.join(others)}"


def is_program(path: Path) -> bool:
    """Whether ``go build`` wrote an executable (ELF, for the Linux targets) rather
    than a package archive."""
    with open(path, "rb") as fh:
        return fh.read(4) == ELF_MAGIC
