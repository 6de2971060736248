"""OCI image layouts for the Dagger test engine, shaped like the real engine's.

The real engine (dagger/dagger v0.21.8) exports containers as OCI image-layout
tarballs and pushes the same blobs to registries. This double writes *real*
layouts (the tests read them with ``skopeo`` and ``umoci`` too) that follow the
engine where it matters to a reader:

- ``engine/engineutil/imageexport/writer.go`` (~117-146, ~160-210): one platform is
  exported as its manifest, whose descriptor has no ``platform``; several as an
  image index whose manifest descriptors carry ``platform``. Manifest and index
  blobs are ``json.MarshalIndent``-ed, the config is compact with sorted top-level
  keys, ``created`` and ``history`` come from the layers' snapshot times (never the
  epoch), history entries carry ``comment: buildkit.exporter.image.v0``. Manifests
  and their descriptors carry the container's annotations and nothing else.
- ``engine/engineutil/containerimage.go`` (~67-69): the platforms are sorted by
  their platform string before the index is written.
- containerd's ``core/images/archive/exporter.go``: ``index.json`` holds the root
  descriptor as is (no ``org.opencontainers.image.ref.name``: the engine passes no
  name), a one-platform archive also has a Docker ``manifest.json``, blobs are
  0444, ``index.json``/``manifest.json`` 0644, ``oci-layout`` 0444.
- containerd's ``pkg/archive/tar.go`` (~585-610): layer entries are PAX, uid/gid 0
  (host files are synced with uid/gid reset), mtimes truncated to seconds,
  directories end in ``/``, in directory-walk order.
- ``core/container.go`` ``resolveIndex`` (~6896-6950) and containerd/platforms
  ``Only`` (``compare.go`` ``platformVector``, ``platforms.go`` ``Normalize``,
  ``database.go`` ``normalizeArch``): how ``Container.import`` picks a manifest.

What is not real: an image here is a single layer holding the files the pipeline
put in the rootfs. The test engine has no registry to pull base images from, so
a base image contributes its config (Env, Cmd, WorkingDir) but no layers.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fs
from .fs import BlobStore, Entry, Tree

MEDIA_LAYOUT_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
# Docker's equivalents, so layouts written by other tools (docker buildx, older
# BuildKit) can be read back too.
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# The epoch as an RFC 3339 timestamp. Only the default of ImageSpec.created, for
# layouts built outside an engine (unit tests); the engine always passes the time
# its snapshot was made, as the real one does.
EPOCH = "1970-01-01T00:00:00Z"
# What BuildKit's writer puts in history entries it adds for layers
# (imageexport/writer.go normalizeLayersAndHistory).
HISTORY_COMMENT = "buildkit.exporter.image.v0"
HISTORY_CREATED_BY = "created by buildkit"

# GOOS/GOARCH values the OCI image spec names for ``platform``. Non-canonical
# spellings (x86_64, aarch64) are rejected rather than normalised, so the platform
# string that goes in is exactly the one that comes back out.
KNOWN_OS = frozenset(
    [
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "illumos",
        "ios",
        "js",
        "linux",
        "netbsd",
        "openbsd",
        "plan9",
        "solaris",
        "wasip1",
        "windows",
        "zos",
    ]
)
KNOWN_ARCH = frozenset(
    [
        "386",
        "amd64",
        "arm",
        "arm64",
        "loong64",
        "mips",
        "mips64",
        "mips64le",
        "mipsle",
        "ppc64",
        "ppc64le",
        "riscv64",
        "s390x",
        "sparc64",
        "wasm",
    ]
)
ARCH_HINTS = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm/v7"}
_VARIANT_RE = re.compile(r"^v[0-9]+(\.[0-9]+)?$")


@dataclass(frozen=True)
class ImageSpec:
    """One single-platform image: the layer content, the runtime config, the
    container's annotations and when its snapshot was made."""

    platform: str  # "linux/amd64", "linux/arm64", "linux/arm/v7"
    tree: Tree  # the rootfs the pipeline built (the only layer content)
    config: dict = field(default_factory=dict)  # OCI image config "config" section
    annotations: Mapping[str, str] = field(default_factory=dict)  # withAnnotation
    created: str = EPOCH  # RFC 3339; also the mtime of entries that have none

    def __post_init__(self) -> None:
        # Fail where the mistake is made, not later inside a tarball writer.
        parse_platform(self.platform)


def parse_platform(platform: str) -> dict[str, str]:
    """Turn ``os/arch[/variant]`` into an OCI platform object.

    Raises ValueError naming the bad value: a typo such as ``linux/amd46`` would
    otherwise produce an image no runtime selects, which only shows up at deploy time.
    """
    if not isinstance(platform, str):
        raise ValueError(f"invalid platform {platform!r}: expected a string 'os/arch[/variant]'")
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {platform!r}: expected 'os/arch[/variant]'")
    os_name, arch = parts[0], parts[1]
    if os_name not in KNOWN_OS:
        raise ValueError(f"invalid platform {platform!r}: unknown os {os_name!r}")
    if arch not in KNOWN_ARCH:
        hint = f" (did you mean {ARCH_HINTS[arch]!r}?)" if arch in ARCH_HINTS else ""
        raise ValueError(f"invalid platform {platform!r}: unknown architecture {arch!r}{hint}")
    result = {"architecture": arch, "os": os_name}
    if len(parts) == 3:
        if not _VARIANT_RE.match(parts[2]):
            raise ValueError(f"invalid platform {platform!r}: bad variant {parts[2]!r}")
        result["variant"] = parts[2]
    return result


def format_platform(platform: dict[str, Any]) -> str:
    """The inverse of :func:`parse_platform` (for descriptors read from a layout)."""
    text = f"{platform.get('os', '')}/{platform.get('architecture', '')}"
    if platform.get("variant"):
        text += f"/{platform['variant']}"
    return text


_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def go_json(obj: Any, indent: bool = False) -> bytes:
    """JSON as Go's encoding/json writes it: keys in the order given (struct field
    order, built by the callers), UTF-8, HTML-safe escapes; ``indent`` is
    ``json.MarshalIndent(v, "", "  ")``, which the writer uses for manifests and
    indexes."""
    if indent:
        text = json.dumps(obj, ensure_ascii=False, indent=2)
    else:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in _GO_ESCAPES.items():
        text = text.replace(char, escaped)  # these only ever occur inside strings
    return text.encode()


def rfc3339(unix_ns: int) -> str:
    """A UTC time as Go's time.Time marshals it (RFC 3339, trailing zeros cut)."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanos:
        text += f".{nanos:09d}".rstrip("0")
    return text + "Z"


def rfc3339_seconds(text: str) -> int:
    """Whole Unix seconds of an RFC 3339 UTC time written by :func:`rfc3339`."""
    import calendar

    head = text.rstrip("Z").split(".")[0]
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _platform_json(platform: Mapping[str, Any]) -> dict[str, Any]:
    """An OCI platform object in the image-spec's field order, empty fields omitted."""
    out: dict[str, Any] = {}
    for key in ("architecture", "os", "os.version", "os.features", "variant"):
        if platform.get(key):
            out[key] = platform[key]
    return out


def _descriptor(
    media_type: str,
    data: bytes,
    annotations: Mapping[str, str] | None = None,
    platform: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A descriptor in the image-spec's field order; empty annotations are omitted."""
    desc: dict[str, Any] = {
        "mediaType": media_type,
        "digest": sha256_digest(data),
        "size": len(data),
    }
    if annotations:
        desc["annotations"] = dict(sorted(annotations.items()))
    if platform:
        desc["platform"] = _platform_json(platform)
    return desc


def _tarinfo(
    name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "", mtime: int = 0
) -> tarfile.TarInfo:
    """A tar header with every field that varies between machines pinned down."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode & 0o7777
    info.size = size
    info.linkname = linkname
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def walk_order(key: str) -> list[str]:
    """Sort key for directory-walk order: a directory, then everything inside it,
    then its next sibling ("a", "a/b", "a-b"), as containerd's diff walks."""
    return key.split("/")


def layer_tar(store: BlobStore, tree: Tree, default_mtime: int = 0) -> bytes:
    """The uncompressed layer: every entry of ``tree`` in directory-walk order.

    Parent directories missing from ``tree`` are added (0o755) because unpackers
    such as umoci expect a directory header before its contents. Entries keep their
    mtime; those without one (parents nobody made explicitly) get ``default_mtime``,
    the snapshot's time.
    """
    entries = dict(tree)
    for key in list(entries):
        fs.with_parents(entries, key)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key in sorted(entries, key=walk_order):
            name = fs.norm(key)
            if not name:
                continue  # the root itself belongs to the base image
            e = entries[key]
            mtime = default_mtime if e.mtime is None else e.mtime
            if e.kind == "dir":
                tar.addfile(_tarinfo(name, tarfile.DIRTYPE, e.mode, mtime=mtime))
            elif e.kind == "symlink":
                tar.addfile(_tarinfo(name, tarfile.SYMTYPE, 0o777, linkname=e.target, mtime=mtime))
            elif e.kind == "file":
                path = store.path(e.blob)
                size = path.stat().st_size
                with open(path, "rb") as fh:
                    tar.addfile(_tarinfo(name, tarfile.REGTYPE, e.mode, size, mtime=mtime), fh)
            else:
                raise ValueError(f"cannot put {e.kind!r} entry {key!r} in a layer")
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with mtime 0 and no file name, so equal input gives equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


# Field order of the image config's "config" section: ocispec ImageConfig, then
# moby's DockerOCIImageConfigExt (what the engine marshals).
_CONFIG_FIELDS = (
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "ArgsEscaped",
    "Healthcheck",
    "OnBuild",
    "Shell",
)


def _config_section(config: Mapping[str, Any]) -> dict[str, Any]:
    """The "config" section as Go writes it: struct order, ``omitempty``, maps sorted."""
    out: dict[str, Any] = {}
    for key in [*_CONFIG_FIELDS, *sorted(set(config) - set(_CONFIG_FIELDS))]:
        value = config.get(key)
        if value in (None, "", [], {}, False):
            continue
        out[key] = dict(sorted(value.items())) if isinstance(value, dict) else value
    return out


def build_image(store: BlobStore, spec: ImageSpec) -> tuple[dict, dict[str, bytes]]:
    """Build layer, config and manifest blobs for one image.

    Returns the manifest descriptor (without ``platform``: the index writer adds it)
    and ``{"sha256:...": bytes}`` for the three blobs.
    """
    platform = parse_platform(spec.platform)
    raw = layer_tar(store, spec.tree, default_mtime=rfc3339_seconds(spec.created))
    layer = gzip_bytes(raw)
    # patchImageConfig re-marshals the config as a map: top-level keys sorted.
    config_obj: dict[str, Any] = {
        "architecture": platform["architecture"],
        "config": _config_section(spec.config),
        "created": spec.created,
        "history": [
            {"created": spec.created, "created_by": HISTORY_CREATED_BY, "comment": HISTORY_COMMENT}
        ],
        "os": platform["os"],
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(raw)]},
    }
    if platform.get("variant"):
        config_obj["variant"] = platform["variant"]
    config = go_json(config_obj)
    manifest_obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": _descriptor(MEDIA_CONFIG, config),
        "layers": [_descriptor(MEDIA_LAYER_GZIP, layer)],
    }
    if spec.annotations:
        manifest_obj["annotations"] = dict(sorted(spec.annotations.items()))
    manifest = go_json(manifest_obj, indent=True)
    descriptor = _descriptor(MEDIA_MANIFEST, manifest, annotations=spec.annotations)
    blobs = {
        sha256_digest(layer): layer,
        sha256_digest(config): config,
        sha256_digest(manifest): manifest,
    }
    return descriptor, blobs


def image_blobs(store: BlobStore, images: list[ImageSpec]) -> tuple[dict, dict[str, bytes]]:
    """The root descriptor and every blob of ``images``.

    One image is exported as its manifest, and its descriptor names no platform
    (writer.go ~117-146); several as an image index over their manifests, sorted
    by platform string (containerimage.go ~67-69), each descriptor with its
    ``platform`` (writer.go ~180). Shared by the layout writer and the registry
    push, so both give the same digest.
    """
    if not images:
        raise ValueError("no containers to export")
    seen: set[str] = set()
    for spec in images:
        if spec.platform in seen:
            raise ValueError(f"duplicate platform {go_quote(spec.platform)}")
        seen.add(spec.platform)
    images = sorted(images, key=lambda spec: spec.platform)
    blobs: dict[str, bytes] = {}
    manifests: list[dict] = []
    for spec in images:
        desc, image = build_image(store, spec)
        manifests.append(desc)
        blobs.update(image)
    if len(manifests) == 1:
        return manifests[0], blobs
    for desc, spec in zip(manifests, images, strict=True):
        desc["platform"] = _platform_json(parse_platform(spec.platform))
    index = go_json(
        {"schemaVersion": 2, "mediaType": MEDIA_LAYOUT_INDEX, "manifests": manifests}, indent=True
    )
    blobs[sha256_digest(index)] = index
    return _descriptor(MEDIA_LAYOUT_INDEX, index), blobs


def go_quote(text: str) -> str:
    """Go's ``%q`` for the plain strings used in messages here."""
    return json.dumps(text, ensure_ascii=False)


def write_oci_tarball(store: BlobStore, images: list[ImageSpec], dest: Path) -> str:
    """Write an OCI image-layout tarball at ``dest``, as the engine's export does.

    Returns the digest of the root descriptor: the manifest (one image) or the image
    index (several). ``index.json`` lists that one descriptor unchanged, without a
    ref name; a one-image archive also gets a Docker ``manifest.json`` (so ``docker
    load`` takes it), a multi-platform one does not (containerd's archive exporter).
    The file is 0600, as the engine creates it (core/container_image.go AsTarball),
    and is written to a temporary name and renamed, so a reader never sees half a
    tarball.
    """
    top, blobs = image_blobs(store, images)
    # (name, bytes or None for a directory, mode)
    records: list[tuple[str, bytes | None, int]] = [
        ("oci-layout", go_json({"imageLayoutVersion": "1.0.0"}), 0o444),
        (
            "index.json",
            go_json({"schemaVersion": 2, "mediaType": MEDIA_LAYOUT_INDEX, "manifests": [top]}),
            0o644,
        ),
        ("blobs/", None, 0o755),
        ("blobs/sha256/", None, 0o755),
    ]
    if top["mediaType"] == MEDIA_MANIFEST:
        manifest = json.loads(blobs[top["digest"]])
        docker = [
            {
                "Config": "blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:"),
                "RepoTags": None,
                "Layers": [
                    "blobs/sha256/" + layer["digest"].removeprefix("sha256:")
                    for layer in manifest["layers"]
                ],
            }
        ]
        records.append(("manifest.json", go_json(docker), 0o644))
    for digest, data in blobs.items():
        records.append(("blobs/sha256/" + digest.removeprefix("sha256:"), data, 0o444))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with (
            os.fdopen(fd, "wb") as fh,
            tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name, data, mode in sorted(records, key=lambda record: record[0]):
                if data is None:
                    tar.addfile(_tarinfo(name, tarfile.DIRTYPE, mode))
                else:
                    tar.addfile(_tarinfo(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return top["digest"]


class _Layout:
    """Blobs of a layout tarball, addressed by digest and checked on read: a
    corrupt or truncated layout should fail loudly, not yield a wrong tree."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            if member.isfile():
                self.members[fs.norm(member.name)] = member

    def file(self, name: str) -> bytes:
        member = self.members.get(name)
        if member is None:
            raise ValueError(f"not an OCI image layout: {name} is missing")
        fh = self.tar.extractfile(member)
        assert fh is not None
        return fh.read()

    def blob(self, digest: str) -> bytes:
        algo, _, hexdigest = digest.partition(":")
        data = self.file(f"blobs/{algo}/{hexdigest}")
        if algo == "sha256" and sha256_digest(data) != digest:
            raise ValueError(f"blob {digest} does not match its digest")
        return data

    def json(self, digest: str) -> dict:
        return json.loads(self.blob(digest))


def _open_layer(data: bytes, media_type: str) -> tarfile.TarFile:
    """Layers are gzip or plain tar (recognised by magic bytes, as media types lie)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        raise ValueError(f"zstd layers are not supported ({media_type})")
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:")


def _apply_layer(store: BlobStore, lower: dict[str, Entry], layer: tarfile.TarFile) -> None:
    """Apply one layer onto ``lower`` in place, overlayfs-style.

    Whiteouts (``.wh.NAME`` deletes NAME, ``.wh..wh..opq`` empties a directory)
    apply only to the layers below, so they are collected first and applied before
    this layer's own entries are added, whatever their order inside the tar.
    """
    upper: dict[str, Entry] = {}
    deleted: list[str] = []
    opaque: list[str] = []
    hardlinks: list[tuple[str, str, int]] = []
    for member in layer:
        key = fs.norm(member.name)
        if not key:
            continue
        parent, _, base = key.rpartition("/")
        if base == ".wh..wh..opq":
            opaque.append(parent)
            continue
        if base.startswith(".wh."):
            deleted.append(f"{parent}/{base[4:]}" if parent else base[4:])
            continue
        mode = member.mode & 0o7777
        mtime = int(member.mtime)
        if member.isdir():
            upper[key] = Entry("dir", mode, mtime=mtime)
        elif member.issym():
            upper[key] = Entry("symlink", 0o777, target=member.linkname, mtime=mtime)
        elif member.islnk():
            hardlinks.append((key, fs.norm(member.linkname), mode))
        elif member.isfile():
            fh = layer.extractfile(member)
            assert fh is not None
            digest, size = store.put_bytes(fh.read())
            upper[key] = Entry("file", mode, digest, size, mtime=mtime)
        # Devices and FIFOs have no place in a snapshot; a Go service image has none.

    def drop(path: str, keep_self: bool) -> None:
        prefix = path + "/" if path else ""
        for k in [k for k in lower if k.startswith(prefix) or (k == path and not keep_self)]:
            del lower[k]

    for path in deleted:
        drop(path, keep_self=False)
    for path in opaque:
        drop(path, keep_self=True)
    for key, entry in upper.items():
        if entry.kind != "dir":
            drop(key, keep_self=True)  # a file replacing a directory hides its contents
    lower.update(upper)
    for key, target, _mode in hardlinks:
        source = lower.get(target)
        if source is not None:
            lower[key] = source
    for key in list(upper):
        fs.with_parents(lower, key)


def _manifests(layout: _Layout, descriptors: list[dict]) -> list[tuple[dict, dict]]:
    """(descriptor, manifest) for every image manifest reachable from ``descriptors``,
    walking nested indexes. Attestation manifests (platform unknown/unknown, as
    BuildKit writes them) are skipped because they are not runnable images."""
    found: list[tuple[dict, dict]] = []
    seen: set[str] = set()

    def walk(descs: list[dict], inherited: dict | None) -> None:
        for desc in descs:
            if desc["digest"] in seen:
                continue
            seen.add(desc["digest"])
            platform = desc.get("platform", inherited)
            obj = layout.json(desc["digest"])
            media = obj.get("mediaType", desc.get("mediaType", ""))
            if media in (MEDIA_LAYOUT_INDEX, MEDIA_DOCKER_LIST) or "manifests" in obj:
                walk(obj.get("manifests", []), None)
            elif platform and platform.get("os") == "unknown":
                continue
            else:
                found.append(({**desc, "platform": platform} if platform else desc, obj))

    walk(descriptors, None)
    return found


def _image_spec(store: BlobStore, layout: _Layout, manifest: dict, platform: str) -> ImageSpec:
    """The image a manifest describes: its layers applied in order, its config."""
    config = layout.json(manifest["config"]["digest"])
    entries: dict[str, Entry] = {}
    for layer_desc in manifest.get("layers", []):
        data = layout.blob(layer_desc["digest"])
        with _open_layer(data, layer_desc.get("mediaType", "")) as layer:
            _apply_layer(store, entries, layer)
    return ImageSpec(
        platform=platform,
        tree=fs.freeze(entries),
        config=dict(config.get("config") or {}),
        annotations=dict(manifest.get("annotations") or {}),
        created=config.get("created") or EPOCH,
    )


def read_oci_tarball(store: BlobStore, src: Path) -> list[ImageSpec]:
    """Read an OCI image-layout tarball back into one ImageSpec per image.

    Works for what :func:`write_oci_tarball` writes and for other layouts with gzip
    or plain tar layers: the tree is the union of all layers applied in order (with
    whiteouts), so a multi-layer image from another tool compares as its final
    filesystem. The platform is the descriptor's, else the config's (a one-image
    export's descriptor has none). This reads everything; ``Container.import``
    picks one image with :func:`import_image` instead.
    """
    images: list[ImageSpec] = []
    with tarfile.open(src, mode="r:*") as tar:
        layout = _Layout(tar)
        version = json.loads(layout.file("oci-layout")).get("imageLayoutVersion")
        if version != "1.0.0":
            raise ValueError(f"{src}: unsupported imageLayoutVersion {version!r}")
        index = json.loads(layout.file("index.json"))
        for desc, manifest in _manifests(layout, index.get("manifests", [])):
            platform = desc.get("platform") or layout.json(manifest["config"]["digest"])
            images.append(_image_spec(store, layout, manifest, format_platform(platform)))
    return images


# --------------------------------------------------------------------------- platforms
# containerd/platforms v1.0.0-rc.2 (the version dagger v0.21.8 pins), rewritten:
# Normalize (platforms.go), normalizeOS/normalizeArch (database.go), Parse/Format
# (platforms.go), platformVector/Only (compare.go).

ENGINE_GOOS = "linux"  # runtime.GOOS of the engine: what an empty OS normalises to

_ARM64_VERSIONS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "v8": ((8,), (0,)),
    "v8.0": ((8,), (0,)),
    **{f"v8.{m}": ((8,), (m,)) for m in range(1, 10)},
    "v9": ((9, 8), (0, 5)),
    "v9.0": ((9, 8), (0, 5)),
    **{f"v9.{m}": ((9, 8), (m, min(m + 5, 9))) for m in range(1, 8)},
}


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return arch, variant


def normalize_platform(platform: Mapping[str, Any]) -> dict[str, str]:
    arch = platform.get("architecture") or ""
    arch, variant = normalize_arch(arch, platform.get("variant") or "")
    os_name = (platform.get("os") or ENGINE_GOOS).lower()
    return {
        "os": "darwin" if os_name == "macos" else os_name,
        "os.version": platform.get("os.version") or "",
        "architecture": arch,
        "variant": variant,
    }


def parse_specifier(specifier: str) -> dict[str, str]:
    """containerd's ``platforms.Parse`` for ``os/arch`` and ``os/arch/variant``
    (what a Dagger ``Platform`` holds: core/platform.go DecodeInput)."""
    parts = specifier.split("/", 3)
    if len(parts) not in (2, 3):
        raise ValueError(f"{specifier!r}: cannot parse platform specifier")
    arch, variant = normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
    if len(parts) == 2 and arch == "arm" and variant == "v7":
        variant = ""
    if len(parts) == 3 and arch == "arm64" and not variant:
        variant = "v8"
    return {"os": (parts[0] or ENGINE_GOOS).lower(), "architecture": arch, "variant": variant}


def format_spec(platform: Mapping[str, Any]) -> str:
    """``platforms.Format``: path.Join(os, arch, variant)."""
    if not platform.get("os"):
        return "unknown"
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(p for p in parts if p)


def _go_atoi(text: str) -> int | None:
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else None


def platform_vector(platform: dict[str, str]) -> list[dict[str, str]]:
    """The platforms ``Only(platform)`` accepts, most preferred first."""
    vector = [platform]
    arch, variant = platform["architecture"], platform["variant"]
    if arch == "amd64":
        version = _go_atoi(variant.removeprefix("v"))
        if version is not None and version > 1:
            vector += [{**platform, "variant": f"v{v}"} for v in range(version - 1, 0, -1)]
        vector.append({**platform, "architecture": "386", "variant": ""})
    elif arch == "arm":
        version = _go_atoi(variant.removeprefix("v"))
        if version is not None and version > 5:
            vector += [{**platform, "variant": f"v{v}"} for v in range(version - 1, 4, -1)]
    elif arch == "arm64":
        variant = variant or "v8"
        vector = []  # the loop below adds the platform itself first
        versions = _ARM64_VERSIONS.get(variant)
        if versions is None:
            return vector  # an unknown arm64 variant matches nothing
        for major, top_minor in zip(*versions, strict=True):
            for minor in range(top_minor, -1, -1):
                name = f"v{major}" if minor == 0 else f"v{major}.{minor}"
                vector.append({**platform, "architecture": "arm64", "variant": name})
        if variant.startswith(("v8", "v9")):
            variant = "v8"  # every arm64 runs 32-bit arm up to v8
        vector += platform_vector({**platform, "architecture": "arm", "variant": variant})
    return vector


def only(platform: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bool]:
    """``platforms.Only``: a matcher for ``platform`` and what it can also run
    (amd64 runs 386; arm/vN runs arm/v5..vN; arm64 runs arm64 v8.x and arm v5..v8).
    Each candidate is compared normalised on OS, architecture and variant."""
    wanted = [normalize_platform(p) for p in platform_vector(normalize_platform(platform))]
    keys = {(p["os"], p["architecture"], p["variant"]) for p in wanted}

    def match(candidate: Mapping[str, Any]) -> bool:
        n = normalize_platform(candidate)
        return (n["os"], n["architecture"], n["variant"]) in keys

    return match


# --------------------------------------------------------------------------- import


class ImageImportError(ValueError):
    """An import failure, worded like the engine's."""


def _resolve_index(
    layout: _Layout,
    desc: dict,
    index: dict,
    match: Callable[[Mapping[str, Any]], bool],
    platform_text: str,
    tag: str,
) -> dict:
    """``resolveIndex`` (core/container.go ~6896-6950): the FIRST descriptor, in
    index order, whose platform (if it has one) ``Only`` accepts and, when ``tag``
    is given, whose ref-name annotation equals it; a nested index is searched the
    same way and its answer is final."""
    if desc.get("mediaType") != MEDIA_LAYOUT_INDEX:
        raise ImageImportError(f"expected index, got {desc.get('mediaType', '')}")
    for m in index.get("manifests") or []:
        if m.get("platform") is not None and not match(m["platform"]):
            continue
        if tag and (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) != tag:
            continue
        media = m.get("mediaType", "")
        if media in (MEDIA_MANIFEST, MEDIA_DOCKER_MANIFEST):
            return m
        if media in (MEDIA_LAYOUT_INDEX, MEDIA_DOCKER_LIST):
            return _resolve_index(layout, m, layout.json(m["digest"]), match, platform_text, tag)
        raise ImageImportError(f"expected manifest or index, got {media}")
    raise ImageImportError(f"no manifest for platform {platform_text} and tag {tag}")


def import_image(store: BlobStore, src: Path, platform: str, tag: str = "") -> ImageSpec:
    """``Container.import`` of an image tarball for a container of ``platform``
    (core/container_image.go Import/FromOCIStore, ~190-260).

    The archive's ``index.json`` is read as an image index (containerd's
    ``ImportIndex``) and resolved with :func:`_resolve_index`. The image's platform
    is its CONFIG's, normalised (a config without ``os`` leaves ``platform``): a
    one-image tarball imports into a container of any platform as what it is.
    """
    container = parse_specifier(platform)
    with tarfile.open(src, mode="r:*") as tar:
        layout = _Layout(tar)
        try:
            if "oci-layout" not in layout.members:
                if "manifest.json" in layout.members:
                    raise ImageImportError(
                        "docker-archive tarballs (manifest.json without oci-layout) are "
                        "not implemented by the dagger test engine"
                    )
                raise ImageImportError("unrecognized image format")
            version = json.loads(layout.file("oci-layout")).get("imageLayoutVersion")
            if version != "1.0.0":
                raise ImageImportError(f"unsupported OCI version {version}")
            if "index.json" not in layout.members:
                raise ImageImportError("missing index.json in OCI layout 1.0.0")
            index_bytes = layout.file("index.json")
        except ImageImportError as exc:
            raise ImageImportError(f"image archive import: {exc}") from None
        root = {"mediaType": MEDIA_LAYOUT_INDEX, "digest": sha256_digest(index_bytes)}
        try:
            desc = _resolve_index(
                layout, root, json.loads(index_bytes), only(container), format_spec(container), tag
            )
        except ImageImportError as exc:
            raise ImageImportError(f"resolve imported image manifest: {exc}") from None
        manifest = layout.json(desc["digest"])
        config = layout.json(manifest["config"]["digest"])
        layers = manifest.get("layers") or []
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(layers) != len(diff_ids):
            raise ImageImportError(
                "mismatched image rootfs and manifest layers: "
                f"{len(diff_ids)} diffIDs vs {len(layers)} layers"
            )
        chosen = normalize_platform(config) if config.get("os") else container
        return _image_spec(store, layout, manifest, format_spec(chosen))
