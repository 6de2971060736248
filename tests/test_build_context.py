"""The build context (``tasks/context.py``, ``tasks/dockerignore.py``): Docker's reading of
``.dockerignore``, git's reading of ``.gitignore``, and the engine receiving exactly
the files the source digest covers.

The pattern tables are moby/patternmatcher v0.6.1's own tests
(``patternmatcher_test.go``, ``ignorefile/ignorefile_test.go``): their inputs and
expected results are facts about the matcher Docker and the Dagger engine use,
written here in our own Python. Cases marked "patternmatcher v0.6.1, run" are
results of that code itself, compiled with Go and run on these inputs while this
module was written (they are not in its tests).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import dagger
import pytest
from dagger import dag

from tasks.context import build_context, context_files, would_send
from tasks.dockerignore import (
    Pattern,
    PatternError,
    PatternMatcher,
    for_engine,
    go_clean,
    literal,
    read_ignore_file,
)
from tasks.source import digest_tree
from tests.gitrepo import git
from tests.real_engine import Engine
from tests.trees import write_tree

# --------------------------------------------------------------------------- patternmatcher

# patternmatcher_test.go TestMatches: `tests` (one pattern, one path). Each must
# hold for MatchesOrParentMatches, MatchesUsingParentResults walking down from the
# root, and MatchesUsingParentResults without parent results.
MATCHES = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),  # weird one
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        True,
    ),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),  # not on Windows
]

# TestMatches: multiPatternTests.
WHL = "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"
MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!" + WHL], WHL, False),
    (["**", "!dist/*.whl"], WHL, False),
    # TestWildcardMatches, TestPatternMatches, TestExclusionPatternMatchesPatternBefore,
    # TestPatternMatchesFolder{,WithSlash,Wildcard}Exclusions,
    # TestExclusionPatternMatchesPatternAfter, TestMatchesWithNoPatterns
    (["*"], "fileutils.go", True),
    (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    ([], "/any/path/there", False),
]

# TestMatch: Go's own filepath.Match cases, through patternmatcher (None: the
# pattern is refused, filepath.ErrBadPattern).
FILEPATH_MATCH = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "\u03b1", True),  # Greek small alpha
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("[]a]", "]", None),
    ("[-]", "-", None),
    ("[x-]", "x", None),
    ("[x-]", "-", None),
    ("[x-]", "z", None),
    ("[-x]", "x", None),
    ("[-x]", "-", None),
    ("[-x]", "a", None),
    ("\\", "a", None),
    ("[a-b-c]", "a", None),
    ("[", "a", None),
    ("[^", "a", None),
    ("[^bc", "a", None),
    ("a[", "a", None),
    ("a[", "ab", None),
    ("*x", "xxx", True),
]

# TestCompile: the match type and, for regexps, the Go regexp built (slash version).
COMPILE = [
    ("*", "regexp", "^[^/]*$"),
    ("file*", "regexp", "^file[^/]*$"),
    ("*file", "regexp", "^[^/]*file$"),
    ("a*/b", "regexp", "^a[^/]*/b$"),
    ("**", "suffix", ""),
    ("**/**", "regexp", "^(.*/)?.*$"),
    ("dir/**", "prefix", ""),
    ("**/dir", "suffix", ""),
    ("**/dir2/*", "regexp", "^(.*/)?dir2/[^/]*$"),
    ("**/dir2/**", "regexp", "^(.*/)?dir2/.*$"),
    ("**file", "suffix", ""),
    ("**/file*txt", "regexp", "^(.*/)?file[^/]*txt$"),
    ("**/**/*.txt", "regexp", "^(.*/)?(.*/)?[^/]*\\.txt$"),
    ("a[b-d]e", "regexp", "^a[b-d]e$"),
    (".*", "regexp", "^\\.[^/]*$"),
    ("abc.def", "exact", ""),
    ("abc?def", "regexp", "^abc[^/]def$"),
    ("**/foo/bar", "suffix", ""),
    ("a(b)c/def", "exact", ""),
    ("a.|)$(}+{bc", "exact", ""),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", "exact", ""),
]


def go_dir(path: str) -> str:
    """Go's ``filepath.Dir``, as the Go tests split a path into its parents."""
    return go_clean(path[: path.rfind("/") + 1])


def walk_down(pm: PatternMatcher, path: str) -> bool:
    """``MatchesUsingParentResults`` fed its parents' results, as the engine walks
    (and as TestMatches' ``MatchesUsingParentResults`` case does)."""
    info: tuple[bool, ...] = ()
    parent = go_dir(path)
    if parent != ".":
        dirs = parent.split("/")
        for n in range(len(dirs)):
            _, info = pm.match("/".join(dirs[: n + 1]), info)
    return pm.match(path, info)[0]


@pytest.mark.parametrize(("pattern", "path", "expected"), MATCHES)
def test_patternmatcher_matches(pattern: str, path: str, expected: bool) -> None:
    pm = PatternMatcher([pattern])
    assert pm.matches(path) is expected  # MatchesOrParentMatches
    assert walk_down(pm, path) is expected
    assert pm.match(path, ())[0] is expected  # ... without parent results


@pytest.mark.parametrize(("patterns", "path", "expected"), MULTI)
def test_patternmatcher_multiple_patterns(patterns: list[str], path: str, expected: bool) -> None:
    pm = PatternMatcher(patterns)
    assert pm.matches(path) is expected
    assert walk_down(pm, path) is expected


@pytest.mark.parametrize(("pattern", "name", "expected"), FILEPATH_MATCH)
def test_patternmatcher_filepath_match_cases(pattern: str, name: str, expected: bool | None):
    if expected is None:
        with pytest.raises(PatternError):
            PatternMatcher([pattern])
        return
    pm = PatternMatcher([pattern])
    assert pm.matches(name) is expected
    assert walk_down(pm, name) is expected


@pytest.mark.parametrize(("pattern", "kind", "regexp"), COMPILE)
def test_patternmatcher_compile(pattern: str, kind: str, regexp: str) -> None:
    p = Pattern(go_clean(pattern), exclusion=False)
    assert p.kind == kind
    assert p.go_regexp == regexp


def test_patternmatcher_cleans_patterns() -> None:
    """TestCleanPatterns, …StripEmptyPatterns, …ExceptionFlag, …LeadingSpaceTrimmed,
    …TrailingSpaceTrimmed, …ErrorSingleException, TestSingleExclamationError,
    TestMatchesWithMalformedPatterns, TestExclusionPatternMatchesWholeDirectory."""
    assert len(PatternMatcher(["docs", "config"]).patterns) == 2
    assert len(PatternMatcher(["docs", "config", ""]).patterns) == 2
    assert PatternMatcher(["docs", "!docs/README.md"]).exclusions
    assert PatternMatcher(["docs", "  !docs/README.md"]).exclusions
    assert PatternMatcher(["docs", "!docs/README.md  "]).exclusions
    assert not PatternMatcher(["docs"]).exclusions
    for bad in (["!"], ["["]):
        with pytest.raises(PatternError):
            PatternMatcher(bad)
    assert not PatternMatcher(["*.go"]).matches(".")


def test_patternmatcher_malformed_regexp_is_refused_up_front() -> None:
    """TestMatchesOrParentMatchesMalformedPatternDoesNotPanicOnRepeatedCall:
    ``[Local-Only]/`` passes ``New`` (filepath.Match has no range order) but its
    Go regexp does not compile, so every match fails with ErrBadPattern and the
    engine's sync fails. Here it is refused before anything is sent."""
    with pytest.raises(PatternError, match="range"):
        PatternMatcher(["[Local-Only]/"])


def test_patternmatcher_as_run() -> None:
    """patternmatcher v0.6.1, run: its escaping misses ``|``, ``{`` and ``}`` (a
    bitmap bug), so they keep their Go regexp meaning; a directory that an earlier
    pattern excluded does not record a later pattern's match, so a walk down (the
    engine) and MatchesOrParentMatches disagree on ``gen/keep.txt``; and
    ``filepath.Match`` stops at the first chunk that fails, so ``a*[`` passes
    ``New`` but its regexp does not compile."""
    assert PatternMatcher(["a{2}b*"]).matches("aab")
    assert not PatternMatcher(["a{2}b*"]).matches("a{2}b")
    assert PatternMatcher(["x*|b"]).matches("ab")  # "^x[^/]*" or "b$"
    assert PatternMatcher(["x*{,2}"]).matches("x{,2}")  # not a Go repeat: literal
    with pytest.raises(PatternError):
        PatternMatcher(["x*{1001}"])
    pm = PatternMatcher(["gen", "!gen/keep.txt", "gen"])
    assert walk_down(pm, "gen/other")
    assert not walk_down(pm, "gen/keep.txt")  # sent by the engine
    assert pm.matches("gen/keep.txt")
    assert walk_down(PatternMatcher(["gen", "!gen/keep.txt", "gen", "gen/**"]), "gen/keep.txt")
    with pytest.raises(PatternError):
        PatternMatcher(["a*["])


@pytest.mark.parametrize("pattern", ["\\d*", "[[:alpha:]]*", "a\\é"])
def test_go_regexp_escapes_are_refused_with_a_reason(pattern: str) -> None:
    """``\\d`` is a digit to Go's regexp (patternmatcher hands it over); this
    module does not reproduce that, and says so instead of guessing."""
    with pytest.raises(PatternError, match="Go's regexp"):
        PatternMatcher([pattern])


def test_read_ignore_file() -> None:
    """ignorefile_test.go TestReadAll, and a BOM, CRLF and a ``#`` after spaces."""
    content = (
        b"test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! "
    )
    assert read_ignore_file(content) == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "!",
        "!",
    ]
    assert read_ignore_file(b"") == []
    assert read_ignore_file(b"\xef\xbb\xbfdocs\r\n  # not a comment\r\nx/../y/\n") == [
        "docs",
        "# not a comment",
        "y",
    ]


def test_for_engine_drops_what_the_engine_reads_differently() -> None:
    """core/schema/host.go: non-local patterns are dropped and ``.`` becomes ``*``;
    in Docker they match nothing, so they are not sent."""
    assert for_engine(["/", ".", "!.", "../x", "!../x", "docs", "!docs/a", "a/../b"]) == [
        "docs",
        "!docs/a",
        "a/../b",
    ]


NAMES = [
    "a*b",
    "q?",
    "[x]",
    "back\\slash",
    "^caret",
    "!bang",
    "a|b",
    "{a,b}",
    "x{2}",
    " lead",
    "trail ",
    "\tboth\t",
    "nb\u00a0",
    "\ufeffbom",
    "$dollar(paren)+plus.dot",
    "# hash",
    "dir with space/file",
    "dir[1]/a*b/c",
]


@pytest.mark.parametrize("name", NAMES)
def test_literal_pattern_matches_that_path_only(name: str) -> None:
    pat = literal(name)
    assert for_engine([pat]) == [pat]  # the engine keeps it as it is
    pm = PatternMatcher([pat])
    assert pm.matches(name)
    assert walk_down(pm, name)
    assert pm.matches(name + "/below")  # a directory takes its contents
    for other in NAMES:
        if other != name:
            assert not pm.matches(other), other
    below = PatternMatcher([literal(name) + "/**"])
    assert below.match(name + "/x/y", (False,))[0]  # matched directly, not via a parent
    assert not below.matches(name)


# --------------------------------------------------------------------------- the context


@pytest.fixture(autouse=True)
def _plain_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No global or system git config: a user's core.excludesFile would change
    what git lists."""
    empty = tmp_path_factory.mktemp("gitconfig") / "config"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def checkout(root: Path, tracked: dict[str, str]) -> None:
    """A git checkout with ``tracked`` committed, ignored or not (``add -f``)."""
    write_tree(root, tracked)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-f", "--", *tracked)
    git(root, "commit", "-q", "-m", "tracked")


def test_gitignore_never_removes_a_tracked_file(tmp_path: Path) -> None:
    """The issue: ``.gitignore`` naming the binary (``svc``) removed the tracked
    ``cmd/svc/`` package. git applies it to untracked files only."""
    checkout(
        tmp_path,
        {".gitignore": "svc\n*.log\n", "cmd/svc/main.go": "package main\n", "keep.log": "x"},
    )
    write_tree(tmp_path, {"svc": "binary", "new.go": "package x\n", "debug.log": "noise"})
    ctx = build_context(tmp_path)
    assert ctx.from_git
    assert ctx.files == [".gitignore", "cmd/svc/main.go", "keep.log", "new.go"]
    assert ctx.excludes[-2:] == ["debug.log", "svc"]


def test_untracked_ignored_directory_is_two_patterns(tmp_path: Path) -> None:
    """A directory git ignores whole costs ``D`` and ``D/**``, not one per file;
    nested ``.gitignore`` files and their ``!`` exceptions are git's business."""
    checkout(
        tmp_path,
        {".gitignore": "node_modules/\n", "sub/.gitignore": "*.tmp\n!keep.tmp\n", "a.go": "a"},
    )
    write_tree(tmp_path, {f"node_modules/p{i}/index.js": "x" for i in range(50)})
    write_tree(tmp_path, {"sub/x.tmp": "x", "sub/keep.tmp": "k", "node_modules.go": "n"})
    ctx = build_context(tmp_path)
    assert ctx.files == [".gitignore", "a.go", "node_modules.go", "sub/.gitignore", "sub/keep.tmp"]
    assert ctx.excludes == ["**/.git", "**/.git/**", "node_modules", "node_modules/**", "sub/x.tmp"]
    assert ctx.bytes_excluded >= 50


def test_without_use_gitignore_a_checkout_is_sent_as_docker_build_sends_it(
    tmp_path: Path,
) -> None:
    """A web app built into an ignored ``dist/`` that ``//go:embed`` needs: git's
    part turned off, .dockerignore alone decides (and .git stays out)."""
    checkout(tmp_path, {".gitignore": "dist/\n*.log\n", ".dockerignore": "*.log\n", "a.go": "a"})
    write_tree(tmp_path, {"dist/index.html": "<p>hi</p>", "debug.log": "noise"})
    assert "dist/index.html" not in build_context(tmp_path).files
    ctx = build_context(tmp_path, use_gitignore=False)
    assert not ctx.from_git
    assert ctx.files == [".dockerignore", ".gitignore", "a.go", "dist/index.html"]
    assert ctx.excludes == ["*.log", "**/.git", "**/.git/**"]


def test_gitignore_is_not_applied_outside_a_checkout(tmp_path: Path) -> None:
    """No index, nothing is untracked: ``.gitignore`` means nothing there (nor to
    Docker, nor to the engine by default); ``.dockerignore`` does."""
    files = {".gitignore": "*.go\n", ".dockerignore": "*.md\n", "a.go": "a", "b.md": "b"}
    write_tree(tmp_path, files)
    ctx = build_context(tmp_path)
    assert not ctx.from_git
    assert ctx.files == [".dockerignore", ".gitignore", "a.go"]
    assert ctx.excludes == ["*.md", "**/.git", "**/.git/**"]


def test_a_subdirectory_of_a_checkout(tmp_path: Path) -> None:
    """git lists paths relative to the source directory, with the enclosing
    checkout's ``.gitignore`` applied; a source the checkout ignores whole is
    taken as a plain directory."""
    checkout(tmp_path, {".gitignore": "*.o\ngen/\n", "svc/main.go": "m", "svc/a.o": "tracked"})
    write_tree(tmp_path, {"svc/b.o": "built", "gen/x.go": "x", "gen/y.o": "y"})
    assert context_files(tmp_path / "svc") == ["a.o", "main.go"]
    gen = build_context(tmp_path / "gen")
    assert not gen.from_git
    assert gen.files == ["x.go", "y.o"]


def test_would_send_answers_for_one_path_as_the_context_does(tmp_path: Path) -> None:
    """The parameter check asks about one file (a workspace's go.work) without
    building the context; for every file of a tree mixing tracked and ignored
    files, .dockerignore exclusions and exceptions, a nested repository sent
    whole, and a subdirectory source, the answer is the context's. Without git
    deciding (use_gitignore off, or a source git ignores whole), .dockerignore
    alone does."""
    checkout(
        tmp_path,
        {
            ".gitignore": "go.work\n/gen/\n*.o\n",
            ".dockerignore": "docs\ntestdata/**\n!testdata/keep.txt\n**/*.tmp\n",
            "go.mod": "module a\n",
            "svc/go.mod": "module b\n",
            "svc/go.work": "go 1.22\n",  # tracked, though .gitignore names it
            "docs/go.work": "go 1.22\n",
        },
    )
    write_tree(
        tmp_path,
        {
            "go.work": "go 1.22\n",
            "gen/go.work": "x",
            "a.o": "x",
            "svc/b.o": "x",
            "x.tmp": "x",
            "testdata/go.work": "x",
            "testdata/keep.txt": "x",
            "new/go.work": "x",
            "nested/go.work": "x",
        },
    )
    git(tmp_path / "nested", "init", "-q")  # untracked nested repository: sent whole
    on_disk = sorted(
        p.relative_to(tmp_path).as_posix()
        for p in tmp_path.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(tmp_path).parts
    )
    for use_gitignore in (True, False):
        sent = set(build_context(tmp_path, use_gitignore=use_gitignore).files)
        for rel in on_disk:
            answer = would_send(tmp_path, rel, known="go.mod", use_gitignore=use_gitignore)
            assert answer is (rel in sent), (rel, use_gitignore)
    assert not would_send(tmp_path, "go.work", known="go.mod")
    assert would_send(tmp_path, "go.work", known="go.mod", use_gitignore=False)
    assert would_send(tmp_path, "svc/go.work", known="svc/go.mod")
    # A source the checkout ignores whole: git lists nothing there, so does not decide.
    assert build_context(tmp_path / "gen").files == ["go.work"]
    assert would_send(tmp_path / "gen", "go.work", known="go.mod")


def test_dockerignore_applies_on_top_of_git(tmp_path: Path) -> None:
    checkout(tmp_path, {".dockerignore": "docs\n*.md\n", "docs/a.txt": "a", "x/docs/b.md": "b"})
    assert context_files(tmp_path) == [".dockerignore", "x/docs/b.md"]


def test_malformed_dockerignore_is_refused(tmp_path: Path) -> None:
    """Docker refuses these; the engine would drop a lone ``!`` or fail its sync."""
    # The last three name no path inside the context, so the engine drops them,
    # but Docker refuses them all the same (patternmatcher v0.6.1 New, run).
    for text in ("!\n", "docs/[\n", "[z-a]\n", "!/\n", "../[\n", "/!/[\n"):
        write_tree(tmp_path, {".dockerignore": text})
        with pytest.raises(PatternError, match=r"\.dockerignore"):
            build_context(tmp_path)


def test_a_pattern_that_is_not_utf8_is_refused_naming_its_line(tmp_path: Path) -> None:
    """The engine gets excludes as JSON text, so such a pattern would reach it as
    another one; in a comment the bytes do no harm."""
    write_tree(tmp_path, {"a.go": "a", "foo\udcff": "x"})
    (tmp_path / ".dockerignore").write_bytes(b"\xef\xbb\xbf# caf\xe9\n*.md\nfoo\xff\n")
    with pytest.raises(PatternError, match=r"\.dockerignore: line 3 is not valid UTF-8"):
        build_context(tmp_path)
    (tmp_path / ".dockerignore").write_bytes(b"# caf\xe9\n*.md\n")
    assert build_context(tmp_path).files == [".dockerignore", "a.go", "foo\udcff"]


def test_a_byte_order_mark_opening_a_pattern_is_skipped_as_go_scans_it() -> None:
    """patternmatcher compiles a pattern with Go's text/scanner, which skips a
    leading U+FEFF; an exact pattern is compared as written (v0.6.1, run)."""
    later_line = PatternMatcher(for_engine(read_ignore_file(b"x\n\xef\xbb\xbf??")))
    assert later_line.matches("ab")
    in_class = PatternMatcher(for_engine(read_ignore_file(b"x\n/\xef\xbb\xbf[a]")))
    assert in_class.matches("a") and not in_class.matches("\ufeffa")
    exact = PatternMatcher(for_engine(read_ignore_file("x\n\ufeffdocs".encode())))
    assert exact.matches("\ufeffdocs") and not exact.matches("docs")


def test_special_files_are_excluded_by_name(tmp_path: Path) -> None:
    """A fifo or socket is not digested; an exact pattern keeps the engine from
    sending it."""
    write_tree(tmp_path, {"a.go": "a"})
    os.mkfifo(tmp_path / "pipe")
    ctx = build_context(tmp_path)
    assert ctx.files == ["a.go"]
    assert "pipe" in ctx.excludes


# --------------------------------------------------------------------------- the engine's side

# Each case: tracked files (None: not a git checkout), files written afterwards
# (untracked), symlinks, the output tarball's path (inside the source).
CASES: dict[str, dict] = {
    "dockerignore-anchored": {
        "tracked": None,
        "files": {
            ".dockerignore": "# comment\ndocs\n*.log\n/build\n",
            "docs/a.md": "a",
            "internal/docs/b.md": "b",
            "x.log": "x",
            "sub/y.log": "y",
            "build/out": "o",
            "cmd/build/keep.go": "k",
            ".gitignore": "*.go\n",  # not a checkout: not applied
            "main.go": "m",
        },
    },
    "star-globstar-exceptions": {
        "tracked": None,
        "files": {
            ".dockerignore": (
                "**/*.tmp\n*/testdata\ndocs\n!docs/README.md\n!**/keep.tmp\n"
                "  # not a comment\nvendor/**\n!vendor/modules.txt\n"
            ),
            "a.tmp": "1",
            "p/q/b.tmp": "2",
            "p/q/keep.tmp": "3",
            "p/testdata/x": "4",
            "p/q/testdata/y": "5",
            "docs/README.md": "6",
            "docs/other.md": "7",
            "# not a comment": "8",
            "vendor/modules.txt": "9",
            "vendor/m/a.go": "10",
        },
    },
    "gitignore-names-a-tracked-path": {
        "tracked": {
            ".gitignore": "svc\nbin/\n",
            "cmd/svc/main.go": "package main",
            "go.mod": "module x",
            "bin/tool.sh": "tracked though ignored",
        },
        "files": {"svc": "binary", "bin/other": "ignored", "cmd/svc/svc": "binary too"},
    },
    "untracked-ignored-and-nested-gitignore": {
        "tracked": {
            ".gitignore": "node_modules/\n*.log\nbuild/\n",
            "sub/.gitignore": "!keep.log\ngen\n",
            "vendor.log": "tracked",
            "a.go": "a",
        },
        "files": {
            "node_modules/x/index.js": "x",
            "node_modules/y/z/w.js": "w",
            "sub/x.log": "x",
            "sub/keep.log": "k",
            "sub/gen/out.go": "g",
            "new.go": "n",
            "build/app.oci.tar": "tarball",
        },
        "output": "build/app.oci.tar",
    },
    "output-inside-an-unignored-dir": {
        "tracked": {"main.go": "m"},
        "files": {"dist/app.oci.tar": "tarball", "dist/notes.txt": "n"},
        "output": "dist/app.oci.tar",
    },
    "dockerignore-exception-inside-a-git-ignored-dir": {
        "tracked": {".gitignore": "gen/\n", ".dockerignore": "gen\n!gen/keep.txt\n", "a.go": "a"},
        "files": {"gen/keep.txt": "must not be sent", "gen/other": "o"},
    },
    "metacharacters-and-spaces": {
        "tracked": {".gitignore": "*.tmp\n", "ok [1].go": "ok", "dir with space/a b.go": "ab"},
        "files": {
            **{f"{name}.tmp": name for name in ("a*b", "q?", "[x]", "back\\slash", "^c", "!b")},
            **{f"{name}.tmp": name for name in ("a|b", "{a,b}", " lead", "trail ", "$(x)+y")},
            "ign dir [x].tmp/f": "f",
            "kept*untracked.go": "k",
            "!bang.go": "b",
        },
    },
    "symlinks-and-nested-repository": {
        "tracked": {".gitignore": "*.out\n", "real/a.go": "a"},
        "files": {"vendor/lib/l.go": "l", "x.out": "o"},
        "symlinks": {"link.go": "real/a.go", "dirlink": "real", "dangling": "nowhere"},
        "nested": "vendor/lib",
    },
    "submodule-checkout": {
        "tracked": {".gitignore": "*.bin\n", "main.go": "m"},
        "files": {"x.bin": "ignored"},
        "gitlink": {"third_party/mod": {"mod.go": "package mod", "data.bin": "its own"}},
    },
}


def make_case(root: Path, case: dict) -> Path | None:
    tracked = case.get("tracked")
    if tracked is not None:
        checkout(root, tracked)
    else:
        root.mkdir(parents=True, exist_ok=True)
    write_tree(root, case["files"])
    for link, target in case.get("symlinks", {}).items():
        (root / link).symlink_to(target)
    if "nested" in case:
        git(root / case["nested"], "init", "-q", "-b", "main")
    for sub, files in case.get("gitlink", {}).items():  # committed as a gitlink
        write_tree(root / sub, files)
        git(root / sub, "init", "-q", "-b", "main")
        git(root / sub, "add", ".")
        git(root / sub, "commit", "-q", "-m", "sub")
        git(root, "add", sub)
        git(root, "commit", "-q", "-m", "gitlink")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    return root / case["output"] if "output" in case else None


def received(root: Path, excludes: list[str], dest: Path) -> list[str]:
    """The files and symlinks the engine syncs from ``root`` with these excludes,
    exported to ``dest`` and listed (types as they are on disk)."""

    async def main() -> None:
        async with dagger.connection(dagger.Config(retry=None)):
            await dag.host().directory(str(root), exclude=excludes).export(str(dest))

    anyio.run(main)
    out = []
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if not stat.S_ISDIR(os.lstat(full).st_mode):
                out.append(os.path.relpath(full, dest).replace(os.sep, "/"))
    return sorted(out)


@pytest.mark.real_engine
@pytest.mark.parametrize("case", list(CASES))
def test_engine_receives_exactly_the_digested_files(
    dagger_engine: Engine, tmp_path: Path, case: str
) -> None:
    """The product's file list (what the digest covers) is what the engine's file
    sync sends for the product's exclude list, and the digest of what arrived is
    the source digest."""
    root = tmp_path / "src"
    output = make_case(root, CASES[case])
    ctx = build_context(root, output)
    dest = tmp_path / "received"
    assert received(root, ctx.excludes, dest) == ctx.files
    assert digest_tree(build_context(dest))[0] == digest_tree(ctx)[0]


def test_the_cases_cover_what_they_claim(tmp_path: Path) -> None:
    """The engine cases above exercise what they are named for (checked without
    the engine, so a change to the context rules that empties them shows here)."""
    files = {}
    for case in CASES:
        root = tmp_path / case
        files[case] = build_context(root, make_case(root, CASES[case])).files
    assert "internal/docs/b.md" in files["dockerignore-anchored"]
    assert "main.go" in files["dockerignore-anchored"]
    assert "sub/y.log" in files["dockerignore-anchored"]
    assert "docs/a.md" not in files["dockerignore-anchored"]
    assert "cmd/build/keep.go" in files["dockerignore-anchored"]
    assert {"p/q/keep.tmp", "docs/README.md", "vendor/modules.txt", "p/q/testdata/y"} <= set(
        files["star-globstar-exceptions"]
    )
    assert "# not a comment" not in files["star-globstar-exceptions"]
    assert "p/testdata/x" not in files["star-globstar-exceptions"]
    assert "cmd/svc/main.go" in files["gitignore-names-a-tracked-path"]
    assert "bin/tool.sh" in files["gitignore-names-a-tracked-path"]
    assert "svc" not in files["gitignore-names-a-tracked-path"]
    nested = files["untracked-ignored-and-nested-gitignore"]
    assert {"vendor.log", "sub/keep.log", "new.go"} <= set(nested)
    assert not any(f.startswith(("node_modules", "build", "sub/gen")) for f in nested)
    assert files["output-inside-an-unignored-dir"] == ["dist/notes.txt", "main.go", "run.sh"]
    assert "gen/keep.txt" not in files["dockerignore-exception-inside-a-git-ignored-dir"]
    meta = files["metacharacters-and-spaces"]
    assert {"ok [1].go", "dir with space/a b.go", "kept*untracked.go", "!bang.go"} <= set(meta)
    assert not any(f.endswith(".tmp") or ".tmp/" in f for f in meta)
    links = files["symlinks-and-nested-repository"]
    assert {"link.go", "dirlink", "dangling", "vendor/lib/l.go"} <= set(links)
    assert not any(".git" in f.split("/") for f in links)
    sub = files["submodule-checkout"]
    assert {"third_party/mod/mod.go", "third_party/mod/data.bin"} <= set(sub)
    assert "x.bin" not in sub


def test_links_leading_out_of_the_source_are_found_with_the_fix(tmp_path: Path) -> None:
    """The engine recreates a symlink as it is (engine/filesync/localfs.go
    ``Symlink``) and has nothing beside the source: a link that climbs out of it,
    or names an absolute path, leads nowhere there. Links within the source, and
    links the engine does not get, are not named."""
    from tasks.source import outside_links_advice

    root = write_tree(
        tmp_path / "mono" / "svc",
        {"go.mod": "module example.com/svc\n\ngo 1.22\n", "main.go": "package main\n",
         "sub/x.go": "package sub\n", ".dockerignore": "ignored\n"},
    )
    write_tree(tmp_path / "mono" / "shared" / "greet", {"greet.go": "package greet\n"})
    (root / "greet").symlink_to("../shared/greet")  # out, a directory
    (root / "sub" / "deep").symlink_to("../../shared/greet/greet.go")  # out, from below
    (root / "hosts").symlink_to("/etc/hosts")  # absolute
    (root / "inner").symlink_to("sub/x.go")  # within
    (root / "sub" / "up").symlink_to("../main.go")  # within, through ..
    (root / "ignored").symlink_to("../shared")  # out, but .dockerignore keeps it home
    links = build_context(root).outside_links()
    assert links == [
        ("greet", "../shared/greet"),
        ("hosts", "/etc/hosts"),
        ("sub/deep", "../../shared/greet/greet.go"),
    ]
    advice = outside_links_advice(root, ".", links[:1])
    mono = str((tmp_path / "mono").resolve())
    assert "sends a symlink leading out of it (greet -> ../shared/greet)" in advice
    assert advice.endswith(
        f"set source to {mono!r} and module_dir to 'svc', so that the engine gets what "
        "they lead to as well"
    )
    absolute = outside_links_advice(root, ".", [("hosts", "/etc/hosts")])
    assert absolute.endswith("leads nowhere: make hosts relative, within source, or copies")
    every = outside_links_advice(root, ".", links)
    assert "sends 3 symlinks leading out of it (greet -> ../shared/greet, hosts -> " in every
    assert every.endswith(
        f"set source to {mono!r} and module_dir to 'svc', so that the engine gets what "
        "they lead to as well; make hosts relative, within source, or copies"
    )
    (root / "far").symlink_to("../../elsewhere")  # a second place: the source holds both
    far = outside_links_advice(root, ".", build_context(root).outside_links())
    assert f"set source to {str(tmp_path.resolve())!r} and module_dir to 'mono/svc'" in far
