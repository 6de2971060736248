"""What a local module's go.mod and go.work files say, read before any engine work.

The files are the module's go.mod and the go.work Go would use: the nearest one
from the module's directory up to the source root (the builder sees the source
at /src, so Go's search for a workspace ends there; :func:`module_files`). Two
things are read from them: the ``go`` lines (``tasks/goversion.py`` holds them
against the builder image) and the directories they point at, which must travel
with the source.

The engine receives the source directory and nothing beside it. A monorepo's
service often replaces a sibling module with a path (``replace example.com/lib
=> ../lib``) or sits in a workspace that ``use``s one; built with ``source`` set
to the service alone, such a build opens a session, uploads, and only then
fails in ``go mod download`` (``reading ../lib/go.mod: open /lib/go.mod: no such
file or directory``). For a local source the files say so before any engine
work, and the fix is known: a source that holds both, with ``module_dir``
pointing at the service.

Only a sure answer refuses: a ``use``, or a directory replacement (Go's
``modfile.IsDirectoryPath``: ``./``, ``../`` or absolute) of a module the go.mod
requires (``go mod download`` reads every one of those), that resolves outside
the source, or inside it but with no go.mod (which Go requires of both), or an
absolute path, which names this machine's file system, not the builder's. The
grammar read is go.mod's own (``golang.org/x/mod/modfile``): ``//`` comments,
``replace``/``use`` blocks, quoted paths. No PyPI package reads go.mod files and
is kept up; this is the part of it that matters here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from tasks.gopackages import scanned_dirs
from tasks.imageref import show

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|//.*|\S+')


def _tokens(line: str) -> list[str]:
    out = []
    for tok in _TOKEN.findall(line):
        if tok.startswith("//"):
            break
        if tok[0] == "`":
            tok = tok[1:-1]
        elif tok[0] == '"':
            try:  # Go's escapes that paths use are JSON's too
                tok = json.loads(tok)
            except ValueError:
                tok = tok[1:-1]
        out.append(tok)
    return out


def directives(text: str, verb: str) -> Iterator[list[str]]:
    """The arguments of each ``verb`` directive, one-line or in a ``verb ( … )`` block."""
    in_block = False
    for line in text.splitlines():
        toks = _tokens(line)
        if not toks:
            continue
        if in_block:
            if toks == [")"]:
                in_block = False
            else:
                yield toks
        elif toks[0] == verb:
            if toks[1:] == ["("]:
                in_block = True
            elif len(toks) > 1:
                yield toks[1:]


def _read(path: Path) -> str:
    """A go.mod or go.work file's text; '' for one that is missing or unreadable,
    which has no directives to act on."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _first_argument(path: Path, verb: str) -> str | None:
    for args in directives(_read(path), verb):
        return args[0]
    return None


def _is_absolute(path: str) -> bool:
    """Absolute on Unix or Windows, as ``modfile.IsDirectoryPath`` reads paths."""
    return path.startswith(("/", "\\")) or (
        len(path) >= 2 and path[0].isascii() and path[0].isalpha() and path[1] == ":"
    )


def is_directory_path(path: str) -> bool:
    """``modfile.IsDirectoryPath``: a replacement that names a directory, not a module."""
    return (
        path in (".", "..") or path.startswith(("./", ".\\", "../", "..\\")) or _is_absolute(path)
    )


def requirements(go_mod: Path) -> set[tuple[str, str]]:
    """(module path, version) of each ``require`` of a go.mod."""
    return {(args[0], args[1]) for args in directives(_read(go_mod), "require") if len(args) >= 2}


def local_dirs(file: Path, required: set[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(what, directory as written) for each directory a go.mod or go.work names
    that the build will read: ``replace`` targets of modules in ``required`` (the
    module's requirements; Go never reads the replacement of a module it does not
    need, so a stale one is harmless), and a go.work's ``use`` lines."""
    text = _read(file)
    for args in directives(text, "replace"):
        if "=>" not in args:
            continue
        old, new = args[: args.index("=>")], args[args.index("=>") + 1 :]
        if len(new) != 1 or not old or not is_directory_path(new[0]):
            continue
        used = any(
            path == old[0] and (len(old) == 1 or version == old[1]) for path, version in required
        )
        if used:
            yield f"replaces {old[0]} with", new[0]
    if file.name == "go.work":
        for args in directives(text, "use"):
            if len(args) == 1:
                yield "uses", args[0]


def module_files(source: Path, module_dir: str) -> list[Path]:
    """The module's go.mod, and the go.work Go would use for it: the nearest one
    from its directory up to the source root, if any; [] for a module that
    resolves outside the source."""
    root = source.resolve()
    module = (root / module_dir).resolve()
    if module != root and root not in module.parents:
        return []
    here = module
    while not (here / "go.work").is_file():
        if here == root:
            return [module / "go.mod"]
        here = here.parent
    return [module / "go.mod", here / "go.work"]


def go_line(path: Path) -> str | None:
    """The version on a go.mod or go.work file's ``go`` line, if it has one."""
    return _first_argument(path, "go")


def module_path(module: Path) -> str | None:
    """The module path on a go.mod's ``module`` line, if it has one."""
    return _first_argument(module / "go.mod", "module")


def check_local_dirs(source: Path, module_dir: str) -> None:
    """Refuse a module whose go.mod or go.work names a directory the engine will
    not have."""
    root = source.resolve()
    module = (root / module_dir).resolve()
    required = requirements(module / "go.mod")
    for file in module_files(source, module_dir):
        for what, written in local_dirs(file, required):
            shown = file.relative_to(root).as_posix()
            if _is_absolute(written):
                raise ValueError(
                    f"{shown} {what} {written}, an absolute path of this machine, which the "
                    "engine does not have; use a relative path inside the source"
                )
            target = Path(os.path.normpath(file.parent / written.replace("\\", "/")))
            if target != root and root not in target.parents:
                common = Path(os.path.commonpath([root, target]))
                inner = module.relative_to(common).as_posix() if module != common else "."
                raise ValueError(
                    f"{shown} {what} {written}, outside source {show(str(source))}, and the "
                    f"engine gets only the source; set source to {show(str(common))} and "
                    f"module_dir to {inner!r}"
                )
            if not (target / "go.mod").is_file():
                raise ValueError(f"{shown} {what} {written}, which has no go.mod")


def find_modules(root: Path, limit: int = 5) -> list[str]:
    """Up to ``limit`` directories under ``root`` that hold a go.mod, nearest first
    (as ``module_dir`` values), for the hint of a source with none at its root;
    the directories looked at are :func:`tasks.gopackages.scanned_dirs`."""
    found = (d for d in scanned_dirs(root) if d != root and (d / "go.mod").is_file())
    return [d.relative_to(root).as_posix() for d in islice(found, limit)]
