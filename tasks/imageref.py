"""Image references: the grammar of github.com/distribution/reference.

References are checked against regexp.go's `reference` and `tag` productions
(the same grammar Docker and containerd parse), re-implemented here with
`re.fullmatch`. The PyPI candidates were weighed first and not used:
`oras.container.Container` matches with a permissive regex and fills in a
default tag, so it cannot tell a missing tag from `:latest`, and
`docker-image-py` anchors with `$`, so it accepts a reference followed by a
newline, which would slip into `-ldflags` and container labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_HOSTS",
    "ImageRef",
    "check_pinned_image",
    "parse_image_ref",
    "show",
]

DOCKER_HUB = "docker.io"
# Names Docker Hub answers to; the engine normalises them all to docker.io.
DOCKER_HUB_HOSTS = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io"})

# --- distribution/reference grammar (regexp.go) ------------------------------
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN_AND_PORT = rf"{_HOST}(?::[0-9]+)?"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_NAME = rf"(?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME}"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
# re.ASCII because Go's \w is ASCII-only; fullmatch because `$` would let a
# trailing newline through.
_REFERENCE_RE = re.compile(
    rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII
)
_REMOTE_NAME_RE = re.compile(_REMOTE_NAME, re.ASCII)
_NAME_TOTAL_LENGTH_MAX = 255
# go-digest's registered algorithms and their hex lengths.
_DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference, so callers never re-split strings on ':'.

    `domain` is empty for Docker Hub shorthand (`alpine`, `org/app`), following
    Docker's rule that the first path component is a registry only if it
    contains '.' or ':', is `localhost`, or has uppercase letters.
    """

    domain: str
    path: str
    tag: str
    digest: str

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def registry(self) -> str:
        """The registry host as the engine names it: Docker Hub's shorthand and
        aliases are ``docker.io`` (distribution's ``ParseNormalizedNamed``)."""
        domain = self.domain or DOCKER_HUB
        return DOCKER_HUB if domain in DOCKER_HUB_HOSTS else domain

    @property
    def registry_path(self) -> str:
        """The path in :attr:`registry`: Docker Hub's one-part names are under
        ``library/``."""
        if self.registry == DOCKER_HUB and "/" not in self.path:
            return f"library/{self.path}"
        return self.path

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def show(value: object) -> str:
    """Quote a value for an error message without letting it grow unbounded."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_image_ref(ref: str) -> ImageRef:
    """Parse an image reference, raising ValueError with a reason a user can act on."""
    match = _REFERENCE_RE.fullmatch(ref)
    if match is None:
        if _REFERENCE_RE.fullmatch(ref.lower()):
            raise ValueError(f"{show(ref)} is not a valid image reference: names must be lowercase")
        raise ValueError(
            f"{show(ref)} is not a valid image reference (expected [registry/]name[:tag][@digest])"
        )
    name = match["name"]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
    else:
        domain, path = "", name
    if not _REMOTE_NAME_RE.fullmatch(path):
        raise ValueError(f"{show(ref)} is not a valid image reference: names must be lowercase")
    if len(path) > _NAME_TOTAL_LENGTH_MAX:
        raise ValueError(
            f"{show(ref)} is not a valid image reference: "
            f"name longer than {_NAME_TOTAL_LENGTH_MAX} characters"
        )
    if not domain and re.fullmatch(r"[a-f0-9]{64}", path):
        raise ValueError(f"{show(ref)} looks like an image ID, not a repository name")
    digest = match["digest"] or ""
    if digest:
        algorithm, _, encoded = digest.partition(":")
        expected = _DIGEST_HEX_LEN.get(algorithm)
        if expected is None:
            raise ValueError(
                f"{show(ref)} has unsupported digest algorithm {algorithm!r} "
                f"(supported: {', '.join(_DIGEST_HEX_LEN)})"
            )
        if not re.fullmatch(rf"[a-f0-9]{{{expected}}}", encoded):
            raise ValueError(
                f"{show(ref)} has a malformed {algorithm} digest "
                f"(expected {expected} lowercase hex characters)"
            )
    return ImageRef(domain=domain, path=path, tag=match["tag"] or "", digest=digest)


def check_pinned_image(ref: str, *, allow_scratch: bool) -> str:
    """Reject floating base images, since they make the same inputs build different bits."""
    if ref == "scratch":
        if allow_scratch:
            return ref
        raise ValueError("'scratch' has no Go toolchain and cannot be the builder image")
    parsed = parse_image_ref(ref)
    if parsed.digest:
        return ref
    if not parsed.tag:
        raise ValueError(
            f"{show(ref)} is not pinned: add a version tag (e.g. {parsed.repository}:1.2.3) "
            "or a digest (@sha256:...)"
        )
    if parsed.tag == "latest":
        raise ValueError(
            f"{show(ref)} is not pinned: the tag 'latest' moves; use a version tag "
            "or pin by digest (@sha256:...)"
        )
    return ref
