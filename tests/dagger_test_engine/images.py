"""Container images of the Dagger test engine: export, import and publish.

Containers become OCI images through ``oci.py``. The test engine has no base
image contents, so an image's one layer holds exactly the files the pipeline put
in the rootfs; a base image contributes its config only.

Timestamps follow the real engine: the config's ``created`` is when the rootfs
snapshot was made, not the epoch, and the engine caches: the same rootfs (same
content, modes and mtimes) on the same platform keeps its first time, so an
identical chain exported twice in one engine gives the same bytes, while a
rebuild whose files have new mtimes gives a new image.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .oci import (
    ImageSpec,
    image_blobs,
    import_image,
    rfc3339,
    write_oci_tarball,
)

if TYPE_CHECKING:
    from .engine import ContainerState, Engine, File


@dataclass(frozen=True)
class Published:
    address: str
    digest: str
    platforms: tuple[str, ...]
    auth_user: str


class Images:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.published: list[Published] = []
        self._lock = threading.Lock()
        self._created: dict[str, str] = {}

    def created(self, s: ContainerState) -> str:
        """When this rootfs snapshot was made: the first time this engine saw this
        platform's rootfs with exactly these contents, modes and mtimes."""
        h = hashlib.sha256(s.platform.encode())
        for key in sorted(s.rootfs):
            e = s.rootfs[key]
            h.update(f"\0{key}\0{e.kind}\0{e.mode:o}\0{e.blob}\0{e.target}\0{e.mtime}".encode())
        with self._lock:
            return self._created.setdefault(h.hexdigest(), rfc3339(time.time_ns()))

    def spec(self, s: ContainerState) -> ImageSpec:
        return ImageSpec(
            platform=s.platform,
            tree=s.rootfs,
            config=s.image_config(),
            annotations=dict(s.annotations),  # the last of a repeated key wins
            created=self.created(s),
        )

    def write_tarball(self, states: list[ContainerState], dest: Path) -> str:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return write_oci_tarball(self.engine.store, [self.spec(s) for s in states], dest)

    def import_tarball(self, src: File, s: ContainerState, tag: str = "") -> ContainerState:
        """``Container.import`` onto the parent state ``s``: the manifest is chosen
        as the engine's ``resolveIndex`` does (see ``oci.import_image``); the image
        config replaces the container's config and its platform the container's
        (core/container_image.go ~222-225); ``imageRef`` becomes ``tag``. The
        archive's manifest annotations are not read (``FromOCIStore`` sets no
        ``Annotations``): the container keeps its parent's."""
        from .engine import EngineError

        path = self.engine.store.path(src.entry()[1].blob)
        try:
            image = import_image(self.engine.store, path, s.platform, tag)
        except (ValueError, tarfile.TarError) as exc:  # ImageImportError is one
            raise EngineError(str(exc)) from None
        cfg = image.config
        env = tuple(tuple(e.split("=", 1)) for e in cfg.get("Env") or () if "=" in e)
        return replace(
            s,
            platform=image.platform,
            rootfs=image.tree,
            base_ref=tag,
            env=env,  # type: ignore[arg-type]
            workdir=cfg.get("WorkingDir") or "/",
            user=cfg.get("User", ""),
            entrypoint=tuple(cfg.get("Entrypoint") or ()),
            default_args=tuple(cfg.get("Cmd") or ()),
            labels=tuple(sorted((cfg.get("Labels") or {}).items())),
            exposed_ports=tuple(sorted(cfg.get("ExposedPorts") or {})),
        )

    def publish(self, states: list[ContainerState], address: str) -> str:
        """Push for real over the OCI distribution API; -> the NORMALISED name with
        the pushed digest (core/container.go ~6400-6410:
        ``reference.ParseNormalizedNamed`` + ``WithDigest``), e.g.
        ``team/app:1`` -> ``docker.io/team/app:1@sha256:...``.

        The digest is that of the manifest (one platform) or index (several)
        pushed, so in one engine it equals the digest of the same image exported.
        """
        from .engine import EngineError
        from .registry import PushError, parse_target, push

        try:
            named = parse_normalized_named(address)
            top, blobs = image_blobs(self.engine.store, [self.spec(s) for s in states])
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        # The credentials are the session's (withRegistryAuth on any container of
        # it), looked up by registry host (auth/registry.go credential()).
        registry = parse_target(address).registry
        username, password = self.engine.session().registry_auth.lookup(registry) or ("", "")
        try:
            digest = push(address, top, blobs, username, password)
        except PushError as exc:
            raise EngineError(str(exc)) from None
        with self._lock:
            self.published.append(
                Published(address, digest, tuple(s.platform for s in states), username)
            )
        return named.with_digest(digest)


# --------------------------------------------------------------------------- references
# github.com/distribution/reference v0.6.0 (the version dagger v0.21.8 pins), rewritten:
# regexp.go (the grammar), normalize.go (ParseNormalizedNamed, splitDockerDomain),
# reference.go (Parse, WithDigest, String); go-digest's Parse for the digest part.

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[(?:[a-fA-F0-9:]+)\])"
_DOMAIN_AND_PORT = _HOST + r"(?::[0-9]+)?"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9A-Fa-f]{32,}"
_REFERENCE_RE = re.compile(
    rf"^((?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$", re.ASCII
)
_ANCHORED_NAME_RE = re.compile(rf"^(?:({_DOMAIN_AND_PORT})/)?({_REMOTE_NAME})$", re.ASCII)
_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}$")
_DIGEST_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True)
class NormalizedNamed:
    """A parsed, normalised image reference (``reference.Named``)."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += ":" + self.tag
        if self.digest:
            text += "@" + self.digest
        return text

    def with_digest(self, digest: str) -> str:
        """``reference.WithDigest(named, digest).String()``: the tag stays, the
        digest replaces any given one."""
        _check_digest(digest)
        return str(replace(self, digest=digest))


def _check_digest(text: str) -> None:
    algorithm, sep, encoded = text.partition(":")
    if not algorithm or not sep or not encoded:
        raise ValueError("invalid checksum digest format")
    length = _DIGEST_ALGORITHMS.get(algorithm)
    if length is None:
        if re.fullmatch(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*", algorithm):
            raise ValueError("unsupported digest algorithm")
        raise ValueError("invalid checksum digest format")
    if len(encoded) != length:
        raise ValueError("invalid checksum digest length")
    if not re.fullmatch(r"[a-f0-9]+", encoded):
        raise ValueError("invalid checksum digest format")


def _split_docker_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash:
        return "docker.io", "library/" + name
    if first == "index.docker.io":
        domain, remote = "docker.io", rest
    elif first == "localhost" or "." in first or ":" in first or first.lower() != first:
        domain, remote = first, rest
    else:
        domain, remote = "docker.io", name
    if domain == "docker.io" and "/" not in remote:
        remote = "library/" + remote
    return domain, remote


def parse_normalized_named(ref: str) -> NormalizedNamed:
    """``reference.ParseNormalizedNamed``: Docker Hub names get ``docker.io/`` and,
    for one-component names, ``library/``; ``String()`` keeps both (only
    ``Familiar`` would strip them). Errors are worded as the library's."""
    if _IDENTIFIER_RE.match(ref):
        raise ValueError(
            f"invalid repository name ({ref}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_docker_domain(ref)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        raise ValueError(f"invalid reference format: repository name ({remote}) must be lowercase")
    full = f"{domain}/{remainder}"
    m = _REFERENCE_RE.match(full)
    if m is None:
        if _REFERENCE_RE.match(full.lower()):
            raise ValueError("repository name must be lowercase")
        raise ValueError("invalid reference format")
    name_match = _ANCHORED_NAME_RE.match(m.group(1))
    assert name_match is not None
    path = name_match.group(2)
    if len(path) > 255:
        raise ValueError("repository name must not be more than 255 characters")
    digest = m.group(3) or ""
    if digest:
        _check_digest(digest)
    return NormalizedNamed(name_match.group(1) or "", path, m.group(2) or "", digest)
