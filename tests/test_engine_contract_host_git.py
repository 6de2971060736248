"""Contract tests: the test engine's host directories, path patterns, git sources
and sessions against the real Dagger engine (v0.21.8).

Each test names the engine source it follows; where a case comes from Dagger's
own integration tests (``core/integration/host_test.go``, ``git_test.go``) or
from moby/patternmatcher's tests, its inputs and expected outputs are those
tests' facts, written here in our own Python and driven through the real
dagger-io SDK. Directory listings are compared without the trailing ``/`` the
real ``entries`` puts on directory names, which is not what these tests are about.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import anyio
import dagger
import httpx
import pytest
from dagger import dag

from tests.dagger_test_engine.patterns import PatternError, PatternMatcher
from tests.dagger_test_engine.server import TestEngine
from tests.git_servers import GitDaemon, GitHTTPServer
from tests.gitrepo import commit_all, git
from tests.real_engine import Engine
from tests.registry_fixtures import Registry
from tests.trees import write_tree

ALPINE = "alpine:3.22.2"


def run(coro_fn, *args, **config):
    async def main():
        async with dagger.connection(dagger.Config(retry=None, **config)):
            return await coro_fn(*args)

    return anyio.run(main)


def names(entries: list[str]) -> list[str]:
    return sorted(e.rstrip("/") for e in entries)



def listing(root: Path) -> list[str]:
    """Every file and directory below ``root``, relative, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            out.append(n if rel == "." else f"{rel}/{n}")
    return sorted(out)


# --------------------------------------------------------------------------- patterns

# moby/patternmatcher v0.6.1 patternmatcher_test.go, TestMatches (single patterns;
# MatchesOrParentMatches and MatchesUsingParentResults must agree) ...
MOBY_MATCHES = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**", "/", True),
    ("**", "dir/file", True),
    ("**/**", "dir/file", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/dir2/file", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc?def", "abcZdef", True),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
    # ... and TestMatch (Go's filepath.Match cases, through the deprecated Matches)
    ("a*", "ab/c", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("ab[^e-g]", "abc", True),
    ("a?b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("[a-ζ]*", "\u03b1", True),  # Greek small alpha
    ("*[a-ζ]", "A", False),
    ("[\\]a]", "]", True),
    ("[x\\-]", "-", True),
    ("[\\-x]", "a", False),
]
MOBY_MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
]
MOBY_BAD = ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "!"]


def _with_parents(pm: PatternMatcher, path: str) -> bool:
    info: tuple[bool, ...] = ()
    dirs = path.split("/")[:-1]
    for n in range(1, len(dirs) + 1):
        _, info = pm.match("/".join(dirs[:n]), info)
    return pm.match(path, info)[0]


@pytest.mark.parametrize(("pattern", "path", "expected"), MOBY_MATCHES)
def test_pattern_matcher_agrees_with_moby_patternmatcher(pattern, path, expected) -> None:
    """moby/patternmatcher v0.6.1 ``patternmatcher_test.go`` (TestMatches,
    TestMatch): the matcher behind every include/exclude of the engine
    (``internal/fsutil/filter.go`` ~110-130, ``util/layercopy/filter.go``)."""
    pm = PatternMatcher([pattern])
    assert pm.match(path)[0] is expected  # no parent info: parents are checked
    assert _with_parents(pm, path) is expected  # walking down, as the engine does


@pytest.mark.parametrize(("patterns", "path", "expected"), MOBY_MULTI)
def test_pattern_matcher_exclusions(patterns, path, expected) -> None:
    """moby/patternmatcher ``patternmatcher_test.go``: ``!`` re-includes, the last
    matching pattern wins, a directory pattern covers what is inside it."""
    pm = PatternMatcher(patterns)
    assert pm.match(path)[0] is expected
    assert _with_parents(pm, path) is expected


@pytest.mark.parametrize("pattern", MOBY_BAD)
def test_pattern_matcher_rejects_malformed_patterns(pattern) -> None:
    """moby/patternmatcher ``New``: ``filepath.Match``'s ErrBadPattern, and a lone ``!``."""
    with pytest.raises(PatternError):
        PatternMatcher([pattern])


# --------------------------------------------------------------------------- host directories


def _abc_tree(root: Path) -> Path:
    return write_tree(
        root,
        {
            "a.txt": "1",
            "b.txt": "2",
            "c.txt.rar": "3",
            "subdir/d.txt": "1",
            "subdir/e.txt": "2",
            "subdir/f.txt.rar": "3",
        },
    )


@pytest.mark.real_engine
def test_host_directory_exclude_include(dagger_engine: Engine, tmp_path: Path) -> None:
    """core/integration/host_test.go TestDirectoryExcludeInclude: exclude wins
    over include; patterns are anchored at the directory (``*.rar`` does not
    reach ``subdir/f.txt.rar``)."""
    src = _abc_tree(tmp_path / "src")

    async def pipeline():
        h = dag.host()
        return [
            await h.directory(str(src), exclude=["*.rar"]).entries(),
            await h.directory(str(src), include=["*.rar"]).entries(),
            await h.directory(str(src), include=["*.txt"], exclude=["b.txt"]).entries(),
            await h.directory(str(src), include=["a.txt"], exclude=["*.txt"]).entries(),
            await h.directory(str(src), exclude=["*.rar"]).directory("subdir").entries(),
        ]

    got = [names(e) for e in run(pipeline)]
    assert got == [
        ["a.txt", "b.txt", "subdir"],
        ["c.txt.rar"],
        ["a.txt"],
        [],
        ["d.txt", "e.txt", "f.txt.rar"],
    ]


@pytest.mark.real_engine
def test_workdir_relative_paths_and_exclude_include(
    dagger_cli_engine: Engine, tmp_path: Path
) -> None:
    """core/integration/host_test.go TestWorkdirExcludeInclude, TestDirectoryRelative,
    TestDirectoryAbsolute: with ``Config(workdir=…)`` the SDK runs ``dagger session
    --workdir``; relative host paths resolve against it (cmd/dagger/main.go ~244),
    ``.`` twice is the same directory, ``../`` may escape."""
    wd = write_tree(
        tmp_path / "wd",
        {
            "a.txt": "1",
            "b.txt": "2",
            "c.txt.rar": "3",
            "subdir/sub-file": "goodbye",
            "some-dir/sub-file": "goodbye",
        },
    )

    async def pipeline():
        h = dag.host()
        return (
            [
                names(await h.directory(".", exclude=["*.rar"]).entries()),
                names(await h.directory(".", exclude=["subdir"]).entries()),
                names(await h.directory(".", include=["*.rar"]).entries()),
                names(await h.directory(".", include=["*.txt"], exclude=["b.txt"]).entries()),
                names(await h.directory(".", include=["a.txt"], exclude=["*.txt"]).entries()),
                names(await h.directory("some-dir").entries()),
                names(await h.directory(str(wd / "some-dir")).entries()),
                await h.file("some-dir/sub-file").contents(),
            ],
            await h.directory(".").id(),
            await h.directory(".").id(),
            "wd" in names(await h.directory("../").entries()),
        )

    listings, id1, id2, escaped = run(pipeline, workdir=str(wd))
    assert listings == [
        ["a.txt", "b.txt", "some-dir", "subdir"],
        ["a.txt", "b.txt", "c.txt.rar", "some-dir"],
        ["c.txt.rar"],
        ["a.txt"],
        [],
        ["sub-file"],
        ["sub-file"],
        "goodbye",
    ]
    assert id1 == id2
    assert escaped


def test_relative_host_paths_follow_the_session_not_the_process(
    dagger_engine: TestEngine,
    dagger_cli_bin: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """engine/client/filesync.go ~295-308 (``pathutil.Abs`` in the CLI, which
    ``chdir``ed to its workdir, cmd/dagger/main.go ~244-250): a relative host path
    is the CLIENT's, fixed when its session started, whatever the engine's or the
    SDK process's working directory is later."""
    for name in ("session-wd", "process-wd", "config-wd"):
        write_tree(tmp_path / name, {f"d/{name}.txt": name})
    session = dagger_engine.new_session(tmp_path / "session-wd")
    monkeypatch.setenv("DAGGER_SESSION_TOKEN", session.token)
    monkeypatch.chdir(tmp_path / "process-wd")

    async def read():
        return names(await dag.host().directory("d").entries())

    assert run(read) == ["session-wd.txt"]  # a `dagger run` session: its own workdir

    monkeypatch.delenv("DAGGER_SESSION_PORT")
    monkeypatch.delenv("DAGGER_SESSION_TOKEN")
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_CLI_BIN", str(dagger_cli_bin))
    assert run(read, workdir=str(tmp_path / "config-wd")) == ["config-wd.txt"]
    assert run(read) == ["process-wd.txt"]  # no --workdir: the CLI's cwd, i.e. ours


@pytest.mark.real_engine
def test_relative_host_paths_are_the_clis_workdir_or_cwd(
    dagger_cli_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engine/client/filesync.go ~295-308 (``pathutil.Abs`` in the CLI, which
    ``chdir``ed to its workdir, cmd/dagger/main.go ~244-250): a session the SDK
    starts through the CLI resolves relative host paths against
    ``Config(workdir=…)`` (``dagger session --workdir``), else against the
    CLI's working directory, which is the SDK process's."""
    for name in ("process-wd", "config-wd"):
        write_tree(tmp_path / name, {f"d/{name}.txt": name})
    monkeypatch.chdir(tmp_path / "process-wd")

    async def read():
        return names(await dag.host().directory("d").entries())

    assert run(read, workdir=str(tmp_path / "config-wd")) == ["config-wd.txt"]
    assert run(read) == ["process-wd.txt"]


@pytest.mark.real_engine
def test_dockerignore_semantics(dagger_engine: Engine, tmp_path: Path) -> None:
    """internal/fsutil/filter.go ~126 with moby/patternmatcher: anchored at the
    root (``dist`` is ``./dist`` only), ``*`` stops at ``/``, ``**`` crosses it,
    ``!`` re-includes, a matched directory takes its contents, a trailing ``/``
    is cleaned away."""
    src = write_tree(
        tmp_path / "src",
        {
            "dist/app": "x",
            "a/dist/x": "x",
            "main.go": "package main",
            "pkg/a.go": "package pkg",
            "pkg/sub/b.go": "package sub",
            "docs/README.md": "#",
            "docs/guide.md": "#",
        },
    )
    cases = {
        "exclude-dist": dict(exclude=["dist"]),
        "include-star": dict(include=["*.go"]),
        "include-globstar": dict(include=["**/*.go"]),
        "reinclude": dict(exclude=["docs", "!docs/README.md"]),
        "trailing-slash": dict(exclude=["pkg/"]),
        "star-dir": dict(exclude=["*/sub"]),
        "include-dir": dict(include=["pkg"]),
    }

    async def pipeline():
        for name, kw in cases.items():
            await dag.host().directory(str(src), **kw).export(str(tmp_path / name))

    run(pipeline)
    got = {name: listing(tmp_path / name) for name in cases}
    everything = listing(src)
    assert got["exclude-dist"] == [p for p in everything if not p.startswith("dist")]
    assert got["include-star"] == ["main.go"]
    assert got["include-globstar"] == ["main.go", "pkg", "pkg/a.go", "pkg/sub", "pkg/sub/b.go"]
    assert got["reinclude"] == [p for p in everything if p != "docs/guide.md"]
    assert got["trailing-slash"] == [p for p in everything if not p.startswith("pkg")]
    assert got["star-dir"] == [p for p in everything if not p.startswith("pkg/sub")]
    assert got["include-dir"] == ["pkg", "pkg/a.go", "pkg/sub", "pkg/sub/b.go"]


@pytest.mark.real_engine
def test_non_local_patterns_are_silently_dropped(dagger_engine: Engine, tmp_path: Path) -> None:
    """core/schema/host.go ~225-260: one leading ``!`` set aside, then patterns
    failing ``filepath.IsLocal`` (absolute, ``..`` escaping, empty) are skipped
    without an error; the rest are joined to the root and cleaned; ``.`` is ``*``."""
    src = write_tree(tmp_path / "src", {"main.go": "x", "notes.md": "x", "pkg/a.go": "x"})
    everything = ["main.go", "notes.md", "pkg"]

    async def pipeline():
        h = dag.host()
        return [
            names(await h.directory(str(src), exclude=[f"/{src.name}/main.go"]).entries()),
            names(await h.directory(str(src), exclude=["/main.go", "../src/main.go"]).entries()),
            names(await h.directory(str(src), exclude=["!"]).entries()),
            names(await h.directory(str(src), include=["/pkg"]).entries()),
            names(await h.directory(str(src), exclude=["./notes.md", "pkg/../main.go"]).entries()),
            names(await h.directory(str(src), exclude=["pkg/a.go/"]).directory("pkg").entries()),
            names(await h.directory(str(src), exclude=["."]).entries()),
            names(await h.directory(str(src), include=["."]).entries()),
        ]

    assert run(pipeline) == [
        everything,  # absolute: dropped
        everything,  # absolute and escaping: dropped
        everything,  # "!" alone: nothing left, dropped
        everything,  # the only include dropped: no include filter at all
        ["pkg"],  # "./notes.md" and "pkg/../main.go" are local, cleaned
        [],  # "pkg/a.go/" cleaned to "pkg/a.go"
        [],  # "." means "*"
        everything,
    ]


@pytest.mark.real_engine
def test_host_directory_is_read_once_per_session_unless_no_cache(
    dagger_cli_engine: Engine, tmp_path: Path
) -> None:
    """core/integration/host_test.go TestDirectoryCacheBehavior, TestFileCacheBehavior
    and TestWorkdir ("does NOT re-sync on each call"): within a session a host
    directory or file is synced once; ``no_cache`` syncs on every call; a synced
    ID keeps its snapshot; a new session (each connection through the CLI is one)
    syncs again."""
    src = write_tree(tmp_path / "src", {"file1.txt": "1"})

    async def first():
        d = dag.host().directory(str(src))
        nc = dag.host().directory(str(src), no_cache=True)
        synced = await dag.host().directory(str(src), no_cache=True).sync()
        before = (await d.entries(), await nc.entries(), await synced.entries())
        f = dag.host().file(str(src / "file1.txt"))
        f_before = await f.contents()
        (src / "file2.txt").write_text("1")
        (src / "file1.txt").write_text("12")
        fresh = dag.host().directory(str(src))  # a fresh query, same session
        after = (
            await d.entries(),
            await fresh.entries(),
            await fresh.file("file1.txt").contents(),
            await nc.entries(),
            await nc.file("file1.txt").contents(),
            await synced.entries(),
            await synced.file("file1.txt").contents(),
            await dag.host().file(str(src / "file1.txt")).contents(),
            await dag.host().file(str(src / "file1.txt"), no_cache=True).contents(),
        )
        return before, f_before, after

    before, f_before, after = run(first)
    assert [names(e) for e in before] == [["file1.txt"]] * 3
    assert f_before == "1"
    assert [names(x) if isinstance(x, list) else x for x in after] == [
        ["file1.txt"],
        ["file1.txt"],
        "1",
        ["file1.txt", "file2.txt"],
        "12",
        ["file1.txt"],
        "1",
        "1",
        "12",
    ]

    async def second():  # a new connection: a new session
        return names(await dag.host().directory(str(src)).entries())

    assert run(second) == ["file1.txt", "file2.txt"]


@pytest.mark.real_engine
def test_host_directory_gitignore(dagger_engine: Engine, tmp_path: Path) -> None:
    """core/integration/host_test.go TestDirectoryGitIgnore: off by default;
    ``gitignore=True`` reads every ``.gitignore`` from the repository root (found
    up from the path, core/schema/host.go ~186-210) down, go-git's rules
    (util/fsxutil/gitignore_matcher.go): ``!`` exceptions, nested files, the
    parent's rules for a subdirectory, ``**/**`` matching nothing."""
    d = tmp_path / "repo"
    (d / ".git").mkdir(parents=True)
    write_tree(
        d,
        {
            ".gitignore": "**.txt\n.git/\n!subdir/e.txt\n*.md\ninternal/foo/",
            "b.md": "2",
            "c.txt.rar": "3",
            "subdir/b.md": "1",
            "subdir/e.txt": "2",
            "subdir/g.txt": "6",
            "subdir/h.yaml": "6",
            "subdir2/.gitignore": "*.yaml\n.gitignore\n",
            "subdir2/foo.go": "1",
            "subdir2/bar.txt": "1",
            "subdir2/baz.md": "1",
            "subdir2/bool.yaml": "1",
        },
    )
    nogit = write_tree(tmp_path / "nogit", {".gitignore": "**/**", "bar.txt": "1", "foo.go": "1"})
    h2 = tmp_path / "h2"
    (h2 / ".git").mkdir(parents=True)
    write_tree(h2, {".gitignore": "bar/\nbaz.txt\n", "foo/foo.txt": "1", "bar/bar.txt": "1"})
    write_tree(h2, {"baz.txt": "1"})
    h3 = tmp_path / "h3"
    (h3 / ".git").mkdir(parents=True)
    write_tree(h3, {".gitignore": "a.txt\n", "a.txt": "1", "b.txt": "2"})

    async def pipeline():
        h = dag.host()
        ign = h.directory(str(d), gitignore=True)
        exc = h.directory(str(d), gitignore=True, exclude=[".gitignore"])
        out = [
            await h.directory(str(d)).entries(),
            await h.directory(str(d / "subdir")).entries(),
            await ign.entries(),
            await ign.directory("subdir").entries(),
            await ign.directory("subdir2").entries(),
            await h.directory(str(d / "subdir"), gitignore=True).entries(),
            await h.directory(str(nogit), gitignore=True).entries(),
            await h.directory(str(h2), gitignore=True).entries(),
            await h.directory(str(h2 / "foo"), gitignore=True).entries(),
            await exc.entries(),
            await exc.directory("subdir2").entries(),
            await h.directory(str(h3)).entries(),
            await h.directory(str(h3), gitignore=True).entries(),
        ]
        try:
            await h.directory(str(h2 / "bar"), gitignore=True).entries()
        except dagger.QueryError as e:
            out.append(str(e))
        return out

    got = run(pipeline)
    err = got.pop()
    assert [names(e) for e in got] == [
        [".git", ".gitignore", "b.md", "c.txt.rar", "subdir", "subdir2"],
        ["b.md", "e.txt", "g.txt", "h.yaml"],
        [".gitignore", "c.txt.rar", "subdir", "subdir2"],
        ["e.txt", "h.yaml"],
        ["foo.go"],
        ["e.txt", "h.yaml"],
        [".gitignore", "bar.txt", "foo.go"],
        [".git", ".gitignore", "foo"],
        ["foo.txt"],
        ["c.txt.rar", "subdir", "subdir2"],
        ["foo.go"],
        [".git", ".gitignore", "a.txt", "b.txt"],
        [".git", ".gitignore", "b.txt"],
    ]
    assert "bar: no such file or directory" in err


@pytest.mark.real_engine
def test_with_directory_patterns_are_not_dropped_or_joined(
    dagger_engine: Engine, tmp_path: Path
) -> None:
    """util/layercopy/filter.go: ``withDirectory`` hands include/exclude straight
    to moby/patternmatcher (no host.go preprocessing); a directory matching an
    include is copied with its contents, even empty; parents of kept paths are
    created."""
    src = write_tree(tmp_path / "src", {"pkg/a.go": "x", "pkg/keep.go": "x", "main.go": "x"})
    (src / "empty").mkdir()

    async def pipeline():
        d = dag.host().directory(str(src))
        base = dag.directory()
        await base.with_directory("inc", d, include=["pkg", "empty"]).export(str(tmp_path / "a"))
        await base.with_directory("exc", d, exclude=["pkg", "!pkg/keep.go"]).export(
            str(tmp_path / "b")
        )
        await base.with_directory("abs", d, exclude=["/main.go"]).export(str(tmp_path / "c"))

    run(pipeline)
    assert listing(tmp_path / "a") == [
        "inc",
        "inc/empty",
        "inc/pkg",
        "inc/pkg/a.go",
        "inc/pkg/keep.go",
    ]
    assert listing(tmp_path / "b") == [
        "exc",
        "exc/empty",
        "exc/main.go",
        "exc/pkg",
        "exc/pkg/keep.go",
    ]
    # "/main.go" stays absolute here and so matches no relative path
    assert "abs/main.go" in listing(tmp_path / "c")


@pytest.mark.real_engine
def test_exists_with_expected_type_follows_symlinks(dagger_engine: Engine, tmp_path: Path) -> None:
    """core/directory.go Exists, and the cases of core/integration/directory_test.go
    TestExists and TestExistsUsingAbsoluteSymlink: a file test follows symlinks
    (as ``test -f`` does) unless told not to or asked for SYMLINK_TYPE; an absolute
    link resolves from the directory's own root. Here on a host directory, whose
    symlinks the file sync keeps as they are (the runtime files' check asks this
    of a git tree)."""
    src = write_tree(tmp_path / "src", {"quotes/descartes": "Cogito, ergo sum"})
    (src / "i-am").symlink_to("quotes/descartes")
    (src / "nothing").symlink_to("quotes/does-not-exist")
    (src / "absolute").symlink_to("/quotes/descartes")
    (src / "via").symlink_to("quotes")
    d_type, f_type, l_type = (
        dagger.ExistsType.DIRECTORY_TYPE,
        dagger.ExistsType.REGULAR_TYPE,
        dagger.ExistsType.SYMLINK_TYPE,
    )
    cases = [
        ("We believe in nothing Lebowski", None, False, False),
        ("quotes", None, False, True),
        ("quotes", d_type, False, True),
        ("quotes/descartes", d_type, False, False),
        ("quotes/descartes", f_type, False, True),
        ("quotes", f_type, False, False),
        ("i-am", l_type, False, True),
        ("quotes/descartes", l_type, False, False),
        ("i-am", f_type, False, True),
        ("nothing", None, True, True),
        ("nothing", None, False, False),
        ("i-am", f_type, True, False),
        ("absolute", f_type, False, True),
        ("via", d_type, False, True),
        ("via/descartes", f_type, False, True),
    ]

    async def pipeline():
        d = dag.host().directory(str(src))
        out = []
        for path, kind, no_follow, _ in cases:
            opts = {"expected_type": kind} if kind is not None else {}
            out.append(await d.exists(path, do_not_follow_symlinks=no_follow, **opts))
        return out

    assert run(pipeline) == [expected for *_, expected in cases]


@pytest.mark.real_engine
def test_file_and_directory_lead_through_symlinks(dagger_engine: Engine, tmp_path: Path) -> None:
    """core/directory.go Subfile and DirectorySubdirectoryLazy (a stat that follows
    symlinks, then the path read inside the snapshot), and the cases of
    core/integration/directory_test.go TestSymlink: a file reached through a link
    has its target's contents, a link to a directory is that directory, an
    absolute link resolves from the directory's root. The runtime files of a
    build may be such links (``runtime_files``)."""
    src = write_tree(tmp_path / "src", {"real/app.yaml": "mode: prod\n", "some-file": "x"})
    (src / "config").symlink_to("real")
    (src / "symlink-to-some-file").symlink_to("some-file")
    (src / "absolute").symlink_to("/some-file")

    async def pipeline():
        d = dag.host().directory(str(src))
        return (
            await d.file("symlink-to-some-file").contents(),
            await d.file("absolute").contents(),
            await d.file("config/app.yaml").contents(),
            await d.directory("config").file("app.yaml").contents(),
            await d.directory("config").entries(),
        )

    assert run(pipeline) == ("x", "x", "mode: prod\n", "mode: prod\n", ["app.yaml"])

    async def not_a_directory():
        return await dag.host().directory(str(src)).directory("symlink-to-some-file").entries()

    with pytest.raises(dagger.QueryError):
        run(not_a_directory)


# --------------------------------------------------------------------------- git


@pytest.fixture
def sample_repo(tmp_path: Path) -> dict[str, str]:
    """main: one (tag v1, annotated tag v1.1) -> two; branch feature; a tag
    named like the branch."""
    repo = tmp_path / "repo"
    repo.mkdir()
    write_tree(repo, {"VERSION": "one\n", "main.go": "package main\n"})
    first = commit_all(repo, "one")
    git(repo, "tag", "v1")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "tag", "-a", "v1.1", "-m", "annotated")
    (repo / "VERSION").write_text("two\n")
    second = commit_all(repo, "two")
    git(repo, "branch", "feature", first)
    git(repo, "tag", "feature", second)
    return {"path": str(repo), "first": first, "second": second}


@pytest.mark.real_engine
def test_git_url_schemes(
    dagger_engine: Engine, git_daemon: GitDaemon, sample_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """util/gitutil/url.go ~25-30, ~120-140 and core/schema/git.go ~237-351:
    ``http``, ``https``, ``ssh`` and ``git`` only; ``file://`` is refused when
    the field resolves; ``user@host:path`` is SSH, which needs an SSH agent
    socket (~474-545; the CLI passes the client's ``SSH_AUTH_SOCK``,
    engine/client/client.go ~1394, so there is none here); the engine, not the
    client, fetches."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    url = git_daemon.add_repo("schemes.git", Path(sample_repo["path"]))

    async def attempt(u: str) -> str:
        try:
            return await dag.git(u).head().commit()
        except dagger.QueryError as e:
            return "ERR " + str(e)

    async def pipeline():
        return (
            [
                await attempt(f"file://{sample_repo['path']}"),
                await attempt("FTP://example.com/repo.git"),
                await attempt(f"ssh://git@127.0.0.1:{git_daemon.port}/schemes.git"),
                await attempt("git@127.0.0.1:schemes.git"),
                await attempt(sample_repo["path"]),
            ],
            await attempt(url),
            await dag.git(url).url(),
        )

    errors, head, got_url = run(pipeline)
    assert 'failed to parse Git URL: invalid protocol "file"' in errors[0]
    assert 'failed to parse Git URL: invalid protocol "ftp"' in errors[1]
    assert "SSH URLs are not supported without an SSH socket" in errors[2]
    assert "SSH URLs are not supported without an SSH socket" in errors[3]
    assert errors[4].startswith("ERR ")  # a local path is no git URL either
    assert head == sample_repo["second"]
    assert got_url == url


@pytest.mark.real_engine
def test_git_refs_and_trees(dagger_engine: Engine, git_daemon: GitDaemon, sample_repo) -> None:
    """util/gitutil/ls_remote.go Lookup (~177-235) and core/schema/git.go
    commit/branch/tag (~1005-1050), as core/integration/git_test.go
    requireSampleGitRepo checks them: strict refs, branches preferred over tags,
    peeled annotated tags, only a full 40-hex SHA is a commit; core/git.go
    doGitCheckout: ``tree()`` keeps a clean ``.git`` (HEAD on the branch, or
    detached at the commit; ``origin`` is the URL) unless discarded."""
    url = git_daemon.add_repo("refs.git", Path(sample_repo["path"]))
    first, second = sample_repo["first"], sample_repo["second"]

    async def attempt(ref):
        try:
            return await ref.commit()
        except dagger.QueryError as e:
            return "ERR " + str(e)

    async def pipeline():
        g = dag.git(url)
        refs = {
            "head": g.head(),
            "main": g.branch("main"),
            "refs/heads/main": g.branch("refs/heads/main"),
            "tag v1": g.tag("v1"),
            "tag v1.1": g.tag("v1.1"),
            "commit": g.commit(first),
            "ref feature": g.ref("feature"),
            "ref v1": g.ref("v1"),
        }
        resolved = {k: (await r.commit(), await r.ref()) for k, r in refs.items()}
        failures = [
            await attempt(g.commit("main")),
            await attempt(g.commit(first[:7])),
            await attempt(g.ref(first[:7])),
            await attempt(g.tag("main")),
            await attempt(g.branch("v1")),
            await attempt(g.branch("nope")),
        ]
        main_tree = g.branch("main").tree()
        trees = (
            names(await main_tree.entries()),
            await main_tree.file(".git/HEAD").contents(),
            await main_tree.file(".git/config").contents(),
            await main_tree.file("VERSION").contents(),
            await g.tag("v1").tree().file(".git/HEAD").contents(),
            await g.commit(first).tree().file("VERSION").contents(),
            names(await g.branch("main").tree(discard_git_dir=True).entries()),
            names(await dag.git(url, keep_git_dir=False).head().tree().entries()),
        )
        return resolved, failures, trees

    resolved, failures, trees = run(pipeline)
    assert resolved == {
        "head": (second, "refs/heads/main"),
        "main": (second, "refs/heads/main"),
        "refs/heads/main": (second, "refs/heads/main"),
        "tag v1": (first, "refs/tags/v1"),
        "tag v1.1": (first, "refs/tags/v1.1"),  # peeled: the commit, not the tag object
        "commit": (first, first),
        "ref feature": (first, "refs/heads/feature"),  # the branch, not the tag "feature"
        "ref v1": (first, "refs/tags/v1"),
    }
    assert 'invalid commit SHA: "main"' in failures[0]
    assert f'invalid commit SHA: "{first[:7]}"' in failures[1]
    assert f'repository does not contain ref "{first[:7]}"' in failures[2]
    assert 'repository does not contain ref "refs/tags/main"' in failures[3]
    assert 'repository does not contain ref "refs/heads/v1"' in failures[4]
    assert 'repository does not contain ref "refs/heads/nope"' in failures[5]
    entries, head, config, version, tag_head, by_commit, discarded, kept_false = trees
    assert entries == [".git", "VERSION", "main.go"]
    assert head.strip() == "ref: refs/heads/main"
    assert url in config
    assert version == "two\n"
    assert tag_head.strip() == first
    assert by_commit == "one\n"
    assert discarded == kept_false == ["VERSION", "main.go"]


@pytest.mark.real_engine
def test_git_over_http_with_token_and_header(
    dagger_engine: Engine,
    git_http: GitHTTPServer,
    git_http_auth: GitHTTPServer,
    sample_repo,
    tmp_path: Path,
) -> None:
    """core/integration/git_test.go TestAuth and TestAuthUsername;
    util/gitutil/cli.go ~133-162: a token is HTTP Basic ``x-access-token:<token>``
    unless ``httpAuthUsername`` is given, a header secret is the whole
    Authorization value; failures read ``git error: git authentication failed``
    (util/gitutil/error.go). The token reaches the server only as a header."""
    src = Path(sample_repo["path"])
    open_url = git_http.add_repo("open.git", src)
    url = git_http_auth.add_repo("private.git", src)
    custom = GitHTTPServer(tmp_path / "custom", token="secretpass", username="customuser")
    try:
        custom_url = custom.add_repo("custom.git", src)
        token = git_http_auth.token

        async def version(u: str, **kw) -> str:
            try:
                return await dag.git(u, **kw).branch("main").tree().file("VERSION").contents()
            except dagger.QueryError as e:
                return "ERR " + str(e)

        async def pipeline():
            basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
            return [
                await version(open_url),
                await version(url),
                await version(url, http_auth_token=dag.set_secret("wrong", "wrong")),
                await version(url, http_auth_token=dag.set_secret("tok", token)),
                await version(url, http_auth_header=dag.set_secret("hdr", "basic " + basic)),
                await version(
                    custom_url,
                    http_auth_token=dag.set_secret("c", "secretpass"),
                    http_auth_username="customuser",
                ),
                await version(
                    custom_url,
                    http_auth_token=dag.set_secret("c2", "secretpass"),
                    http_auth_username="wronguser",
                ),
                await version(custom_url, http_auth_token=dag.set_secret("c3", "secretpass")),
            ]

        got = run(pipeline)
    finally:
        custom.stop()
    ok = "two\n"
    assert got[0] == ok
    for failed in (got[1], got[2], got[6], got[7]):
        assert failed.startswith("ERR ")
        assert "git error" in failed and "authentication failed" in failed
        assert token not in failed and "secretpass" not in failed
    assert got[3] == got[4] == got[5] == ok
    assert token not in git_http_auth.log_text()
    assert "secretpass" not in custom.log_text()
    assert any(r[3] == "x-access-token" for r in git_http_auth.requests)


@pytest.mark.real_engine
def test_git_remote_is_listed_once_per_session(
    dagger_cli_engine: Engine, git_daemon: GitDaemon, sample_repo
) -> None:
    """core/git_remote.go ~64-113 (``git`` is a per-client call, its ls-remote
    cached under the session ID): a branch pushed to after the first listing
    still resolves to the old commit in the same session, and to the new one in
    the next session (each connection through the CLI is one)."""
    src = Path(sample_repo["path"])
    url = git_daemon.add_repo("moving.git", src)

    async def main_commit():
        return await dag.git(url).branch("main").commit()

    third = ""

    async def pipeline():
        nonlocal third
        before = await main_commit()
        (src / "VERSION").write_text("three\n")
        third = commit_all(src, "three")
        git_daemon.add_repo("moving.git", src)
        return before, await main_commit()

    before, after = run(pipeline)
    assert before == after == sample_repo["second"]
    assert run(main_commit) == third


# --------------------------------------------------------------------------- sessions


def test_drop_ends_the_session(dagger_engine: TestEngine, monkeypatch) -> None:
    """A TransportError on a real engine means the session is gone: the global
    ``dag`` keeps the dead connection and every later request on it fails, and
    so does a new connection with the same session token; only a new session
    works."""
    dead = dagger_engine.env["DAGGER_SESSION_TOKEN"]
    dagger_engine.add_fault("Container.platform", "drop")

    async def pipeline():
        errors = []
        for _ in range(2):
            try:
                await dag.container().platform()
            except dagger.TransportError as e:
                errors.append(type(e).__name__)
        return errors

    assert run(pipeline) == ["TransportError", "TransportError"]
    assert not dagger_engine.sessions[dead].alive

    async def isolated():
        # Not the global ``dag``: a failed connect would leave the SDK's shared
        # connection holding these dead parameters for the rest of the process.
        async with dagger.Connection(dagger.Config(retry=None)) as client:
            return await client.container().platform()

    with pytest.raises(dagger.ClientConnectionError):
        anyio.run(isolated)
    with pytest.raises(httpx.TransportError):
        httpx.post(
            f"http://127.0.0.1:{dagger_engine.port}/query",
            json={"query": "{ version }"},
            auth=(dead, ""),
        )
    monkeypatch.setenv("DAGGER_SESSION_TOKEN", dagger_engine.env["DAGGER_SESSION_TOKEN"])

    async def platform():
        return await dag.container().platform()

    assert run(platform).startswith("linux/")


def test_new_connection_through_the_cli_opens_a_new_session(
    dagger_cli_engine: TestEngine, tmp_path: Path, monkeypatch
) -> None:
    """dagger/provisioning/_session.py: with ``_EXPERIMENTAL_DAGGER_CLI_BIN`` the
    SDK runs ``<bin> session --label …``, reads one JSON line and closes stdin
    when done; each ``dagger.connection()`` is a new session of the same engine,
    so a retry after a dropped session works. The session ends with its CLI."""
    monkeypatch.chdir(tmp_path)
    te = dagger_cli_engine
    before = {s.id for s in te.live_sessions()}
    te.add_fault("Container.platform", "drop")
    seen: list[str] = []

    async def platform():
        seen.extend(s.id for s in te.live_sessions() if s.id not in before)
        return await dag.container().platform()

    with pytest.raises(dagger.TransportError):
        run(platform)
    assert run(platform).startswith("linux/")
    new = [s for s in te.sessions.values() if s.id in seen]
    assert len({s.id for s in new}) == 2
    assert all("dagger.io/sdk.name:python" in s.labels for s in new)
    assert all(s.workdir == tmp_path for s in new)
    assert not any(s.alive for s in new)  # both CLIs ended their sessions
    log = te.log.snapshot()["requests"]
    assert {r["session"] for r in log} >= {s.id for s in new}


@pytest.mark.real_engine
def test_registry_auth_belongs_to_the_session(
    dagger_cli_engine: Engine, auth_registry: Registry
) -> None:
    """core/schema/container.go ~3998-4028 and auth/registry.go: withRegistryAuth
    stores the credential in the SESSION's auth provider under the registry host
    when it resolves; a publish from another container of that session uses it
    (the registry refuses anonymous pushes), a publish in another session (each
    connection through the CLI is one) does not."""
    target = f"{auth_registry.host}/team/session-auth"

    async def with_auth():
        secret = dag.set_secret("pw", auth_registry.password)
        await (
            dag.container()
            .with_registry_auth(
                f"http://{auth_registry.host}/other/repo:tag", auth_registry.username, secret
            )
            .id()
        )
        other = dag.container().from_(ALPINE).with_label("n", "1")
        return await other.publish(f"{target}:1")

    async def without_auth():
        return await dag.container().from_(ALPINE).with_label("n", "2").publish(f"{target}:2")

    assert run(with_auth).startswith(f"{target}:1@sha256:")
    with pytest.raises(dagger.QueryError):
        run(without_auth)
    assert auth_registry.tags("team/session-auth") == ["1"]


def test_cli_stand_in_speaks_the_session_protocol(test_engine_session: TestEngine, dagger_cli_bin):
    """dagger/provisioning/_session.py: one JSON line with port and token on
    stdout, serve until stdin closes, exit 0; the session's workdir is
    ``--workdir`` (else the CLI's cwd)."""
    proc = subprocess.Popen(
        [str(dagger_cli_bin), "session", "--label", "x:y", "--workdir", "/tmp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        session = test_engine_session.sessions[info["session_token"]]
        assert info["port"] == test_engine_session.port
        assert (session.alive, str(session.workdir), session.labels) == (True, "/tmp", ("x:y",))
        r = httpx.post(
            f"http://127.0.0.1:{info['port']}/query",
            json={"query": "{ version }"},
            auth=(info["session_token"], ""),
        )
        assert r.json()["data"]["version"]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    assert not session.alive
