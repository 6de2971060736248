"""``.dockerignore`` as Docker and the Dagger engine read and match it.

moby/patternmatcher's rules (``ignorefile.ReadAll``, ``New`` +
``MatchesUsingParentResults``), as the engine applies them to
``host().directory(exclude=…)`` (``internal/fsutil/filter.go``): anchored at the
root, ``*`` and ``?`` stop at ``/``, ``**`` crosses it, a pattern naming a directory
covers everything in it, ``!`` re-includes, the last matching pattern wins.

A literal pattern escapes ``* ? [ ] \\ ^ | { }`` with ``\\``: patternmatcher turns
each pattern into a Go regexp, where ``\\x`` is ``x`` for punctuation, ``^`` is an
anchor, and ``|``, ``{``, ``}`` keep their meaning too (its escaping of them is
broken, see ``_REGEX_ESCAPED``; ``. + ( ) $`` it does escape). A leading ``!`` is
escaped, or it would be an exception; whitespace at either end goes into a class
(``[ ]``), since ``New`` trims it.

The engine drops patterns that are not local paths (``/…``, ``..``) and turns
``.`` into ``*`` (``core/schema/host.go``); in Docker these match nothing (ReadAll
already strips a leading ``/``) unless a ``|`` makes their regexp match anything
(``../*|``), so they are dropped here, as the engine reads them. A pattern
Docker refuses (a lone ``!``, a malformed ``[`` class) is refused here before
anything is sent, a dropped one too. So is a backslash before a letter,
digit or non-ASCII character, and a ``[:name:]`` class: patternmatcher hands these
to Go's regexp (``\\d`` is a digit there, not ``d`` as in ``filepath.Match``), and
this module does not reproduce that part of Go's regexp; the error says so.
One more difference from the engine, on the safe side: a pattern whose Go regexp
does not compile fails the engine's sync only when some path reaches it; it is
refused here in any case.

Not docker-py's ``docker.utils.build.PatternMatcher``, the one maintained Python
reading of .dockerignore (installed with the ``docker`` package): it differs from
patternmatcher on 28 of patternmatcher's 126 cases (TestMatches, TestMatch: the
tables in ``tests/test_build_context.py``). It lowercases pattern and path
(case-insensitive matching), checks a single parent directory (the deprecated
``Matches``), always re-includes ``.dockerignore``, and has no ``\\`` escapes and
no syntax errors for malformed classes. The matcher here is small
and tested against patternmatcher's own cases (``tests/test_build_context.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class PatternError(ValueError):
    """A pattern Docker (or this module) refuses; nothing is sent."""


# --------------------------------------------------------------------------- Go's path helpers

# Go's unicode.IsSpace, which strings.TrimSpace uses (str.isspace also takes \x1c-\x1f).
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def go_trim_space(s: str) -> str:
    start, end = 0, len(s)
    while start < end and s[start] in _GO_SPACE:
        start += 1
    while end > start and s[end - 1] in _GO_SPACE:
        end -= 1
    return s[start:end]


def go_clean(p: str) -> str:
    """Go's ``filepath.Clean`` on Unix (``posixpath.normpath`` keeps a leading ``//``)."""
    if not p:
        return "."
    rooted = p.startswith("/")
    out: list[str] = []
    for part in p.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    return "/" + cleaned if rooted else cleaned or "."


def go_is_local(p: str) -> bool:
    """Go's ``filepath.IsLocal`` on Unix: what ``host.directory`` keeps of a pattern."""
    if not p or p.startswith("/"):
        return False
    cleaned = go_clean(p)
    return cleaned != ".." and not cleaned.startswith("../")


# --------------------------------------------------------------------------- .dockerignore


def _pattern_lines(data: bytes) -> list[tuple[int, bytes]]:
    """The lines of a .dockerignore that are not comments, numbered from 1: a
    comment is a line starting with ``#`` before any trimming (after a leading
    byte order mark, which patternmatcher drops)."""
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    return [
        (number, raw.removesuffix(b"\r"))
        for number, raw in enumerate(lines, 1)
        if not raw.startswith(b"#")
    ]


def first_line_not_utf8(data: bytes) -> int | None:
    """The number of the first pattern line that is not UTF-8. Docker matches a
    pattern's bytes, whatever they are, but the Dagger API carries excludes as
    JSON text, so such a pattern would reach the engine as some other one.
    Comments may hold any bytes; nobody reads them."""
    for number, line in _pattern_lines(data):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return None


def read_ignore_file(data: bytes) -> list[str]:
    """patternmatcher ``ignorefile.ReadAll``: the patterns of a .dockerignore.

    Comments are skipped (``_pattern_lines``); a leading ``/`` is dropped (``/docs``
    is ``docs``); ``!`` may be followed by spaces.
    """
    patterns: list[str] = []
    for _, raw in _pattern_lines(data):
        line = raw.decode("utf-8", "surrogateescape")
        pattern = go_trim_space(line)
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = go_trim_space(pattern[1:])
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def for_engine(patterns: list[str]) -> list[str]:
    """The patterns, less those that match nothing in Docker but would be read
    differently by the engine (``core/schema/host.go``): not local paths (it drops
    them) and ``.`` (it makes that ``*``). The rest it passes on unchanged."""
    out = []
    for p in patterns:
        body = p[1:] if p.startswith("!") else p
        if body and (not go_is_local(body) or go_clean(body) == "."):
            continue
        out.append(p)
    return out


# --------------------------------------------------------------------------- filepath.Match syntax


def _get_esc(chunk: str, i: int) -> int:
    """``getEsc``: one class character at ``i``; -> index after it."""
    if i >= len(chunk) or chunk[i] in "-]":
        raise PatternError("syntax error in pattern")
    if chunk[i] == "\\":
        i += 1
        if i >= len(chunk):
            raise PatternError("syntax error in pattern")
    i += 1
    if i >= len(chunk):
        raise PatternError("syntax error in pattern")
    return i


def _match_chunk(chunk: str, s: str) -> str | None:
    """``matchChunk``: the rest of ``s`` after ``chunk`` matched its start, or
    None. Raises on a syntax error anywhere in the chunk (Go checks it all)."""
    failed = False
    i = 0
    while i < len(chunk):
        failed = failed or not s
        c = chunk[i]
        if c == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            i += 1
            negated = i < len(chunk) and chunk[i] == "^"
            if negated:
                i += 1
            matched = False
            nrange = 0
            while True:
                if i < len(chunk) and chunk[i] == "]" and nrange > 0:
                    i += 1
                    break
                j = _get_esc(chunk, i)
                lo = chunk[j - 1]
                hi = lo
                if chunk[j] == "-":
                    k = _get_esc(chunk, j + 1)
                    hi = chunk[k - 1]
                    j = k
                i = j
                matched = matched or (not failed and lo <= r <= hi)
                nrange += 1
            failed = failed or matched == negated
        elif c == "?":
            if not failed:
                failed = s[0] == "/"
                s = s[1:]
            i += 1
        else:
            if c == "\\":
                i += 1
                if i >= len(chunk):
                    raise PatternError("syntax error in pattern")
            if not failed:
                failed = chunk[i] != s[0]
                s = s[1:]
            i += 1
    return None if failed else s


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern.startswith("*"):
        pattern, star = pattern[1:], True
    inrange = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            inrange = True
        elif c == "]":
            inrange = False
        elif c == "*" and not inrange:
            return star, pattern[:i], pattern[i:]
        i += 1
    return star, pattern, ""


def filepath_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match`` on Unix. patternmatcher calls it with ``"."`` only
    for its error: and Go's ``filepath.Match`` (unlike ``path.Match``) stops at the
    first chunk that fails, so a later malformed chunk is not reported."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return "/" not in name
        rest = _match_chunk(chunk, name)
        if rest is not None and (not rest or pattern):
            name = rest
            continue
        if star:
            i = 0
            found = False
            while i < len(name) and name[i] != "/":
                rest = _match_chunk(chunk, name[i + 1 :])
                i += 1
                if rest is not None:
                    if not pattern and rest:
                        continue
                    name, found = rest, True
                    break
            if found:
                continue
        return False
    return not name


# --------------------------------------------------------------------------- patternmatcher

# patternmatcher's shouldEscape. Its source lists ".+()|{}$", but it keeps them in
# an [8]byte bitmap as 1 << (b / 8): for "|", "{" and "}" (codes >= 64) that bit is
# shifted out of the byte, so they reach Go's regexp unescaped ("a|b" alternates,
# "a{2}" repeats). Docker and the engine read patterns that way; so does this.
_REGEX_ESCAPED = frozenset(".+()$")
_GO_REPEAT = re.compile(r"\{(0|[1-9][0-9]*)(?:,(0|[1-9][0-9]*)?)?\}")


def _unsupported(pattern: str, what: str) -> PatternError:
    return PatternError(
        f"{pattern!r}: {what}; patternmatcher hands it to Go's regexp, which this "
        "project does not reproduce: write the pattern without it"
    )


def _escaped_char(pattern: str, c: str) -> str:
    """The character Go's regexp reads for ``\\c``, where this module follows it."""
    if ord(c) < 0x80 and not c.isalnum():
        return c
    raise _unsupported(pattern, f"the escape \\{c}")


def _class_char(c: str) -> str:
    return "\\" + c if ord(c) < 0x80 and not c.isalnum() else c


def _go_class(pattern: str, rx: str, i: int) -> tuple[str, int]:
    """The Go regexp class starting at ``rx[i] == "["`` as a Python class."""
    j = i + 1
    negated = j < len(rx) and rx[j] == "^"
    if negated:
        j += 1
    ranges: list[tuple[str, str]] = []
    first = True
    while True:
        if j >= len(rx):
            raise PatternError(f"{pattern!r}: missing closing ]")
        if rx[j] == "]" and not first:
            j += 1
            break
        first = False
        if rx.startswith("[:", j) and len(rx) - j > 2 and rx.find(":]", j + 2) >= 0:
            raise _unsupported(pattern, "a [:name:] class")
        lo, j = _go_class_char(pattern, rx, j)
        hi = lo
        if j + 1 < len(rx) and rx[j] == "-" and rx[j + 1] != "]":
            hi, j = _go_class_char(pattern, rx, j + 1)
            if hi < lo:
                raise PatternError(f"{pattern!r}: invalid character class range {lo}-{hi}")
        ranges.append((lo, hi))
    body = "".join(
        _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}" for lo, hi in ranges
    )
    return f"[{'^' if negated else ''}{body}]", j


def _go_class_char(pattern: str, rx: str, j: int) -> tuple[str, int]:
    if rx[j] == "\\":
        if j + 1 >= len(rx):
            raise PatternError(f"{pattern!r}: trailing backslash")
        return _escaped_char(pattern, rx[j + 1]), j + 2
    return rx[j], j + 1


def _python_regex(pattern: str, rx: str) -> re.Pattern[str]:
    """patternmatcher's Go regexp ``rx`` (built from ``pattern``) in Python's syntax.

    Outside classes ``rx`` holds only what patternmatcher writes itself (``^``,
    ``$``, ``[^/]*``, ``[^/]``, ``(.*/)?``, ``.*``), escapes, literal characters
    and the pattern's own ``[``, ``]``, ``^`` (an anchor, as in Go), ``|`` and
    ``{``/``}`` (a repeat where Go's grammar makes one: no ``{,n}``, no leading
    zeros, counts up to 1000; ``^{2}`` repeats the anchor)."""
    out: list[str] = []
    i = 0
    while i < len(rx):
        c = rx[i]
        if c == "\\":
            if i + 1 >= len(rx):
                raise PatternError(f"{pattern!r}: trailing backslash")
            out.append(re.escape(_escaped_char(pattern, rx[i + 1])))
            i += 2
            continue
        if c == "[":
            cls, i = _go_class(pattern, rx, i)
            out.append(cls)
            continue
        if c == "{":
            rep = _GO_REPEAT.match(rx, i)
            if rep is None:  # Go: "If the repeat cannot be parsed, { is a literal."
                out.append(r"\{")
                i += 1
                continue
            lo, hi = rep.groups()
            if int(lo) > 1000 or (hi is not None and (int(hi) > 1000 or int(lo) > int(hi))):
                raise PatternError(f"{pattern!r}: invalid repeat count {rep.group()}")
            if out and out[-1] == "^":
                out[-1] = "(?:^)"  # Go repeats an anchor; Python needs it grouped
            out.append(rep.group())
            i = rep.end()
            continue
        if c == "$" and i == len(rx) - 1:
            out.append(r"\Z")  # Go's $ is the end of the text, Python's also before a final \n
        elif c in "^(.*)?|":
            out.append(c)
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out))
    except re.error as exc:
        raise PatternError(f"{pattern!r}: {exc}") from None


@dataclass
class Pattern:
    """One pattern of patternmatcher: ``compile`` and ``match``."""

    cleaned: str
    exclusion: bool
    kind: str = field(init=False)  # "exact" | "prefix" | "suffix" | "regexp"
    go_regexp: str = field(init=False, default="")
    regex: re.Pattern[str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        pat = self.cleaned
        rx = "^"
        kind = "exact"
        # Go's text/scanner, which reads the pattern here, skips a leading BOM;
        # the exact, prefix and suffix matches compare the pattern as written.
        i = 1 if pat.startswith("\ufeff") else 0
        first = True
        while i < len(pat):
            c = pat[i]
            i += 1
            if c == "*":
                if i < len(pat) and pat[i] == "*":
                    i += 1
                    if i < len(pat) and pat[i] == "/":  # "**/" is "**"
                        i += 1
                    if i >= len(pat):  # trailing "**": everything from here
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            rx += ".*"
                            kind = "regexp"
                    else:
                        rx += "(.*/)?"
                        kind = "regexp"
                    if first:
                        kind = "suffix"
                else:
                    rx += "[^/]*"
                    kind = "regexp"
            elif c == "?":
                rx += "[^/]"
                kind = "regexp"
            elif c in _REGEX_ESCAPED:
                rx += "\\" + c
            elif c == "\\":
                if i < len(pat):
                    rx += "\\" + pat[i]
                    i += 1
                    kind = "regexp"
                else:
                    rx += "\\"
            elif c in "[]":
                rx += c
                kind = "regexp"
            else:
                rx += c
            first = False
        self.kind = kind
        if kind == "regexp":
            self.go_regexp = rx + "$"
            self.regex = _python_regex(self.cleaned, self.go_regexp)

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.cleaned
        if self.kind == "prefix":
            return path.startswith(self.cleaned[:-2])
        if self.kind == "suffix":
            suffix = self.cleaned[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regex is not None
        return self.regex.search(path) is not None


MatchInfo = tuple[bool, ...]


class PatternMatcher:
    """moby/patternmatcher v0.6.1 ``PatternMatcher``, for slash-separated paths."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[Pattern] = []
        self.exclusions = False
        for raw in patterns:
            p = go_trim_space(raw)
            if not p:
                continue
            p = go_clean(p)
            exclusion = p[0] == "!"
            if exclusion:
                if len(p) == 1:
                    raise PatternError('illegal exclusion pattern: "!"')
                p = p[1:]
                self.exclusions = True
            try:
                filepath_match(p, ".")
            except PatternError:
                raise PatternError(f"{p!r}: syntax error in pattern") from None
            self.patterns.append(Pattern(p, exclusion))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, path: str, parent: MatchInfo = ()) -> tuple[bool, MatchInfo]:
        """``MatchesUsingParentResults``: is ``path`` excluded, given what the
        patterns did on its parent directory (``()``: unknown, check every parent)?
        -> (matched, what to pass for the paths in ``path`` if it is a directory)."""
        matched = False
        info = [False] * len(self.patterns)
        for i, pattern in enumerate(self.patterns):
            hit = bool(parent) and parent[i]
            if not hit:
                # an include that already matched, or an exception with nothing to
                # undo, is not evaluated (and records no match for the children)
                if pattern.exclusion != matched:
                    continue
                hit = pattern.match(path)
                if not hit and not parent:
                    parent_dir = go_clean(path[: path.rfind("/") + 1])  # Go's filepath.Dir
                    if parent_dir != ".":
                        dirs = parent_dir.split("/")
                        hit = any(pattern.match("/".join(dirs[: n + 1])) for n in range(len(dirs)))
            info[i] = hit
            if hit:
                matched = not pattern.exclusion
        return matched, tuple(info)

    def matches(self, path: str) -> bool:
        """``MatchesOrParentMatches``."""
        return self.match(path)[0]


def literal(path: str) -> str:
    """A pattern that matches exactly ``path`` (slash-separated, relative), as
    ``host.directory`` and patternmatcher read it (see the module docstring)."""
    out = []
    last = len(path) - 1
    for i, c in enumerate(path):
        if c in "*?[]\\^|{}" or (i == 0 and c == "!"):
            out.append("\\" + c)
        elif (i in (0, last)) and (c in _GO_SPACE or c == "\ufeff"):
            out.append(f"[{c}]")  # New() trims it; text/scanner skips a leading BOM
        else:
            out.append(c)
    return "".join(out)
