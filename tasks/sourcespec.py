"""What the ``source`` and ``git_ref`` parameters may say, checked without a clone.

A source is a local directory (sent to the engine as a directory) or a git URL
in one of the forms ``git clone`` takes, which the Dagger engine, not this
process, fetches: so the schemes are the engine's (util/gitutil/url.go in
dagger/dagger), and a ``file://`` URL, a path on the engine's machine, is
refused with the way to send the checkout instead. Credentials never go in a
URL: a parameter is stored in Prefect and shown in its UI.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from tasks.imageref import show

__all__ = ["check_git_ref", "check_source", "is_git_url", "repository_name"]

_SCP_LIKE_RE = re.compile(
    r"(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(?P<path>\S+)"
)
_GIT_SCHEMES = ("https", "http", "ssh", "git")
_SHORT_SHA_RE = re.compile(r"[0-9a-f]{4,39}")
_GIT_REF_FORBIDDEN = set(" ~^:?*[\\")


def is_git_url(source: str) -> bool:
    """Tell a git URL from a local path, using the same forms `git clone` accepts."""
    if "://" in source:
        return True
    return _SCP_LIKE_RE.fullmatch(source) is not None


def check_source(source: str) -> str:
    """A git URL the engine can fetch, or an existing local directory."""
    if not source:
        raise ValueError("must not be empty (use '.' for the current directory)")
    if is_git_url(source):
        _check_git_url(source)
    else:
        _check_local_source(source)
    return source


def check_git_ref(ref: str) -> str:
    """A branch, tag or full commit SHA, by git-check-ref-format's rules, plus no
    leading '-' so the ref can never be read as a command-line option."""
    bad = (
        ref.startswith(("-", "/"))
        or ref.endswith(("/", ".", ".lock"))
        or ref == "@"
        or ".." in ref
        or "@{" in ref
        or "//" in ref
        or any(ch in _GIT_REF_FORBIDDEN or not ch.isprintable() for ch in ref)
    )
    if bad:
        raise ValueError(f"{show(ref)} is not a valid branch, tag or commit name")
    if _SHORT_SHA_RE.fullmatch(ref):
        # The engine treats only a full 40-hex SHA as a commit and looks anything
        # else up as a ref name (util/gitutil/commit.go), which a short SHA is not.
        raise ValueError(
            f"{show(ref)} looks like an abbreviated commit; give the full 40-character "
            "commit SHA (or a branch or tag name)"
        )
    return ref


def repository_name(source: str) -> str:
    """The last element of a git URL's path without ``.git``, or a local
    directory's own name, as a person would name the app."""
    if not is_git_url(source):
        return Path(source).expanduser().resolve().name
    if "://" in source:
        path = urlsplit(source).path
    else:
        scp = _SCP_LIKE_RE.fullmatch(source)
        path = scp["path"] if scp else source
    return path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")


def _check_git_url(source: str) -> None:
    if any(ch.isspace() or not ch.isprintable() for ch in source):
        raise ValueError(f"git URL {show(source)} must not contain whitespace or control chars")
    if "://" not in source:
        return  # scp-like form; the regex that recognised it already checked its shape
    scheme = source.split("://", 1)[0].lower()
    if scheme == "file":
        raise ValueError(
            f"{show(source)}: the Dagger engine does not fetch file:// URLs; give the "
            "checkout's directory instead (it is sent as a local directory, its commit recorded)"
        )
    if scheme not in _GIT_SCHEMES:
        raise ValueError(
            f"{show(source)} has unsupported URL scheme {scheme!r} "
            f"(supported: {', '.join(s + '://' for s in _GIT_SCHEMES)}, git@host:path)"
        )
    try:
        parts = urlsplit(source)
        _ = parts.port  # raises on a non-numeric port
    except ValueError as exc:
        raise ValueError(f"{show(source)} is not a valid URL: {exc}") from None
    if not parts.hostname or parts.path.strip("/") == "":
        raise ValueError(f"{show(source)} needs both a host and a repository path")
    if parts.password is not None or (scheme in ("https", "http") and parts.username is not None):
        raise ValueError(
            f"git URL for host {parts.hostname!r} embeds credentials; remove them from the URL "
            "and name a Prefect Secret block holding the token in git_secret_block"
        )


def _check_local_source(source: str) -> None:
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(
            f"{show(source)} does not exist (expected a local Go module directory or a git URL)"
        )
    if not path.is_dir():
        raise ValueError(f"{show(source)} is not a directory")
