"""Reading the OCI image-layout tarballs the engine exports, on the host.

Two facts of the real engine shape this module (dagger/dagger v0.21.8):

- A one-platform export's ``index.json`` holds the image manifest itself, and its
  descriptor carries no ``platform`` (``engine/engineutil/imageexport/writer.go``);
  only a multi-platform export has an image index whose descriptors name their
  platforms. So a platform is read from the image *config* (``os``,
  ``architecture``, ``variant``), which every image has.
- ``Container.import`` picks a manifest with containerd's ``platforms.Only``,
  taking the first compatible one in an index sorted by platform
  (``core/container.go`` ``resolveIndex``): ``linux/amd64`` next to ``linux/386``
  imports 386, ``linux/arm/v7`` next to ``linux/arm/v6`` imports v6. Publishing from
  one multi-platform tarball would therefore push the wrong images. Instead each
  platform is cut out into its own one-manifest layout, which can only import as
  itself.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass(frozen=True)
class ImageEntry:
    """One platform's image inside a layout: its manifest descriptor and platform."""

    platform: str
    descriptor: dict[str, Any]
    manifest: dict[str, Any]


def platform_string(obj: dict[str, Any]) -> str:
    """``os/arch[/variant]`` of an OCI platform object or image config."""
    parts = [obj.get("os", ""), obj.get("architecture", ""), obj.get("variant", "")]
    if not parts[0] or not parts[1]:
        raise ValueError(f"image config names no platform (os={parts[0]!r}, arch={parts[1]!r})")
    return "/".join(p for p in parts if p)


class Layout:
    """An open layout tarball: blobs by digest, without extracting it."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}

    def read(self, name: str) -> bytes:
        member = self.members.get(name)
        handle = self.tar.extractfile(member) if member is not None else None
        if handle is None:
            raise ValueError(f"not a complete OCI image layout: {name} is missing")
        return handle.read()

    def json(self, name: str) -> dict[str, Any]:
        return json.loads(self.read(name))

    @staticmethod
    def blob_name(digest: str) -> str:
        algorithm, _, encoded = digest.partition(":")
        return f"blobs/{algorithm}/{encoded}"

    def top(self) -> dict[str, Any]:
        manifests = self.json("index.json").get("manifests") or []
        if len(manifests) != 1:
            raise ValueError(f"expected one image in index.json, found {len(manifests)}")
        return manifests[0]

    def images(self) -> list[ImageEntry]:
        """Every runnable image, each with the platform its config declares."""
        found: list[ImageEntry] = []

        def walk(descriptors: list[dict[str, Any]]) -> None:
            for desc in descriptors:
                blob = self.json(self.blob_name(desc["digest"]))
                if desc.get("mediaType") in INDEX_MEDIA_TYPES or "manifests" in blob:
                    walk(blob.get("manifests") or [])
                    continue
                if (desc.get("platform") or {}).get("os") == "unknown":
                    continue  # an attestation manifest, not an image
                config = self.json(self.blob_name(blob["config"]["digest"]))
                found.append(ImageEntry(platform_string(config), desc, blob))

        walk([self.top()])
        return found


def image_digests(tarball: Path) -> tuple[str, dict[str, str]]:
    """-> (digest of the top manifest or index, {platform: manifest digest})."""
    top, platforms, _ = read_image(tarball)
    return top, platforms


# What a report shows of an image's config: how the container starts and what it
# is told, as the engine wrote it (not as the build asked for it).
RUNTIME_KEYS = ("Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts", "Env")


def read_image(tarball: Path) -> tuple[str, dict[str, str], dict[str, Any]]:
    """-> (as :func:`image_digests`, and the first image's ``RUNTIME_KEYS``), in
    one reading of the tarball. Every platform gets the same config; the
    environment is kept as names only, since a report is no place for values."""
    with tarfile.open(tarball) as tar:
        layout = Layout(tar)
        top = layout.top()["digest"]
        platforms: dict[str, str] = {}
        images = layout.images()
        for image in images:
            if image.platform in platforms:
                raise ValueError(f"{tarball}: two images for platform {image.platform}")
            platforms[image.platform] = image.descriptor["digest"]
        config = (
            layout.json(layout.blob_name(images[0].manifest["config"]["digest"])) if images else {}
        )
    settings = config.get("config") or {}
    found = {key: settings[key] for key in RUNTIME_KEYS if settings.get(key)}
    if "ExposedPorts" in found:
        found["ExposedPorts"] = sorted(found["ExposedPorts"])
    if "Env" in found:
        found["Env"] = [item.partition("=")[0] for item in found["Env"]]
    return top, platforms, found


@dataclass(frozen=True)
class PlatformLayout:
    """One platform's image cut out of a layout, and its manifest's annotations,
    which ``Container.import`` does not carry over (see :func:`split_by_platform`)."""

    path: Path
    annotations: dict[str, str]


def split_by_platform(tarball: Path, dest: Path) -> dict[str, PlatformLayout]:
    """Write one single-manifest layout per platform under ``dest``.

    Blobs are copied by streaming from the source tarball, so a large image is never
    held in memory. Each layout's only descriptor names its platform, so an import
    for another platform fails loudly instead of quietly taking this one.

    The manifest's annotations are returned beside each layout: the engine's
    ``Container.import`` takes the layers and config but not the annotations
    (core/container_image.go ``FromOCIStore`` sets no ``Annotations``), so whoever
    pushes an imported image gives them back with ``withAnnotation``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, PlatformLayout] = {}
    with tarfile.open(tarball) as tar:
        layout = Layout(tar)
        for image in layout.images():
            os_, arch, *variant = image.platform.split("/")
            platform = {"os": os_, "architecture": arch}
            if variant:
                platform["variant"] = variant[0]
            descriptor = {
                k: v for k, v in image.descriptor.items() if k not in ("platform", "annotations")
            }
            descriptor["platform"] = platform
            index = {
                "schemaVersion": 2,
                "mediaType": INDEX_MEDIA_TYPES[0],
                "manifests": [descriptor],
            }
            blobs = [
                image.descriptor["digest"],
                image.manifest["config"]["digest"],
                *(layer["digest"] for layer in image.manifest.get("layers", [])),
            ]
            path = dest / (image.platform.replace("/", "-") + ".oci.tar")
            with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out_tar:
                _add_bytes(out_tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                _add_bytes(out_tar, "index.json", json.dumps(index).encode())
                for digest in dict.fromkeys(blobs):
                    name = layout.blob_name(digest)
                    member = layout.members.get(name)
                    if member is None:
                        raise ValueError(f"{tarball}: blob {digest} is missing")
                    out_tar.addfile(member, tar.extractfile(member))
            annotations = image.manifest.get("annotations") or {}
            out[image.platform] = PlatformLayout(path, dict(annotations))
    return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
