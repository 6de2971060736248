"""OCI image layouts for the Dagger test engine.

The real engine exports containers as OCI image-layout tarballs (``Container.export``,
``Platform``-variant exports) and pushes the same blobs to registries. This test double
must produce *real* layouts, not a private format, because the project's tests feed
them to independent readers (``skopeo``, ``umoci``) and because the digest of an image
is what the flows report and compare: a build that changed nothing has to give the
same digest again. Hence everything here is deterministic: sorted tar entries, fixed
timestamps and owners, gzip without a timestamp, and JSON with sorted keys and
compact separators.

An image here is one layer on top of a base that is only *recorded* (as the
``org.opencontainers.image.base.name`` annotation), never copied: the test engine
has no registry to pull the base from, and the flows only care that the reference
is carried through.
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
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"

# The epoch as an RFC 3339 timestamp: a fixed "created" keeps digests reproducible
# (what SOURCE_DATE_EPOCH=0 gives with real BuildKit).
EPOCH = "1970-01-01T00:00:00Z"

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
    """One single-platform image: the layer content, the runtime config, and the
    base it is meant to sit on."""

    platform: str  # "linux/amd64", "linux/arm64", "linux/arm/v7"
    tree: Tree  # files added on top of the base image (the only layer content)
    config: dict = field(default_factory=dict)  # OCI image config "config" section
    base_ref: str = ""  # recorded as annotation org.opencontainers.image.base.name

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


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the digest must depend only on content."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}


def _tarinfo(
    name: str, kind: bytes, mode: int, size: int = 0, linkname: str = ""
) -> tarfile.TarInfo:
    """A tar header with every field that varies between machines pinned down."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode & 0o7777
    info.size = size
    info.linkname = linkname
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def layer_tar(store: BlobStore, tree: Tree) -> bytes:
    """The uncompressed layer: every entry of ``tree`` in sorted order.

    Parent directories missing from ``tree`` are added (0o755) because unpackers
    such as umoci expect a directory header before its contents. Sorting puts each
    directory before everything inside it ("a" < "a-b" < "a/b").
    """
    entries = dict(tree)
    for key in list(entries):
        fs.with_parents(entries, key)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key in sorted(entries):
            name = fs.norm(key)
            if not name:
                continue  # the root itself belongs to the base image
            e = entries[key]
            if e.kind == "dir":
                tar.addfile(_tarinfo(name, tarfile.DIRTYPE, e.mode))
            elif e.kind == "symlink":
                tar.addfile(_tarinfo(name, tarfile.SYMTYPE, 0o777, linkname=e.target))
            elif e.kind == "file":
                path = store.path(e.blob)
                size = path.stat().st_size
                with open(path, "rb") as fh:
                    tar.addfile(_tarinfo(name, tarfile.REGTYPE, e.mode, size), fh)
            else:
                raise ValueError(f"cannot put {e.kind!r} entry {key!r} in a layer")
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with mtime 0 and no file name, so equal input gives equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def build_image(store: BlobStore, spec: ImageSpec) -> tuple[dict, dict[str, bytes]]:
    """Build layer, config and manifest blobs for one image.

    Returns the manifest descriptor (with ``platform``, as it appears in an image
    index) and ``{"sha256:...": bytes}`` for the three blobs.
    """
    platform = parse_platform(spec.platform)
    raw = layer_tar(store, spec.tree)
    layer = gzip_bytes(raw)
    config_obj: dict[str, Any] = {
        **platform,
        "config": dict(spec.config),
        "created": EPOCH,
        "history": [
            {
                "created": EPOCH,
                "created_by": "dagger-test-engine: add layer"
                + (f" on {spec.base_ref}" if spec.base_ref else ""),
            }
        ],
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(raw)]},
    }
    config = canonical_json(config_obj)
    manifest_obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": _descriptor(MEDIA_CONFIG, config),
        "layers": [_descriptor(MEDIA_LAYER_GZIP, layer)],
    }
    if spec.base_ref:
        manifest_obj["annotations"] = {ANNOTATION_BASE_NAME: spec.base_ref}
    manifest = canonical_json(manifest_obj)
    descriptor = {**_descriptor(MEDIA_MANIFEST, manifest), "platform": platform}
    blobs = {
        sha256_digest(layer): layer,
        sha256_digest(config): config,
        sha256_digest(manifest): manifest,
    }
    return descriptor, blobs


def image_blobs(store: BlobStore, images: list[ImageSpec]) -> tuple[dict, dict[str, bytes]]:
    """The top-level descriptor and every blob of ``images``.

    One image is published as its manifest; several as an image index over their
    manifests, which is what registries and ``docker pull`` understand as a
    multi-arch image. Shared by the layout writer and (later) a registry push, so
    both give the same digest.
    """
    if not images:
        raise ValueError("no images to write")
    seen: set[str] = set()
    for spec in images:
        if spec.platform in seen:
            raise ValueError(
                f"duplicate platform {spec.platform!r}: an index needs one per platform"
            )
        seen.add(spec.platform)
    blobs: dict[str, bytes] = {}
    manifests: list[dict] = []
    for spec in images:
        desc, image = build_image(store, spec)
        manifests.append(desc)
        blobs.update(image)
    if len(manifests) == 1:
        return manifests[0], blobs
    index = canonical_json(
        {"schemaVersion": 2, "mediaType": MEDIA_LAYOUT_INDEX, "manifests": manifests}
    )
    blobs[sha256_digest(index)] = index
    return _descriptor(MEDIA_LAYOUT_INDEX, index), blobs


def write_oci_tarball(
    store: BlobStore, images: list[ImageSpec], dest: Path, ref_name: str = "latest"
) -> str:
    """Write an OCI image layout as a tar file at ``dest``.

    Returns the digest of the top-level manifest (one image) or image index (several
    images). ``index.json`` lists that one descriptor with the ref-name annotation, so
    ``skopeo ... oci-archive:FILE`` and ``umoci ... --image DIR:ref`` find it and a
    multi-arch image resolves to the caller's platform. The file is written to a
    temporary name and renamed, so a reader never sees half a tarball.
    """
    top, blobs = image_blobs(store, images)
    top = {**top, "annotations": {ANNOTATION_REF_NAME: ref_name}}
    files: dict[str, bytes] = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical_json(
            {"schemaVersion": 2, "mediaType": MEDIA_LAYOUT_INDEX, "manifests": [top]}
        ),
    }
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.removeprefix("sha256:")] = data
    dirs = ["blobs", "blobs/sha256"]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with (
            os.fdopen(fd, "wb") as fh,
            tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name in sorted([*dirs, *files]):
                if name in files:
                    data = files[name]
                    tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
                else:
                    tar.addfile(_tarinfo(name, tarfile.DIRTYPE, 0o755))
        os.chmod(tmp, 0o644)
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
        if member.isdir():
            upper[key] = Entry("dir", mode)
        elif member.issym():
            upper[key] = Entry("symlink", 0o777, target=member.linkname)
        elif member.islnk():
            hardlinks.append((key, fs.norm(member.linkname), mode))
        elif member.isfile():
            fh = layer.extractfile(member)
            assert fh is not None
            digest, size = store.put_bytes(fh.read())
            upper[key] = Entry("file", mode, digest, size)
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


def read_oci_tarball(store: BlobStore, src: Path) -> list[ImageSpec]:
    """Read an OCI image-layout tarball back into one ImageSpec per platform.

    Works for what :func:`write_oci_tarball` writes and for other layouts with gzip
    or plain tar layers: the tree is the union of all layers applied in order (with
    whiteouts), so a multi-layer image from another tool compares as its final
    filesystem. ``base_ref`` comes from the manifest annotation when present.
    """
    images: list[ImageSpec] = []
    with tarfile.open(src, mode="r:*") as tar:
        layout = _Layout(tar)
        version = json.loads(layout.file("oci-layout")).get("imageLayoutVersion")
        if version != "1.0.0":
            raise ValueError(f"{src}: unsupported imageLayoutVersion {version!r}")
        index = json.loads(layout.file("index.json"))
        for desc, manifest in _manifests(layout, index.get("manifests", [])):
            config = layout.json(manifest["config"]["digest"])
            platform = desc.get("platform") or config
            entries: dict[str, Entry] = {}
            for layer_desc in manifest.get("layers", []):
                data = layout.blob(layer_desc["digest"])
                with _open_layer(data, layer_desc.get("mediaType", "")) as layer:
                    _apply_layer(store, entries, layer)
            images.append(
                ImageSpec(
                    platform=format_platform(platform),
                    tree=fs.freeze(entries),
                    config=dict(config.get("config") or {}),
                    base_ref=(manifest.get("annotations") or {}).get(ANNOTATION_BASE_NAME, ""),
                )
            )
    return images
