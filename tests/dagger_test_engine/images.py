"""Container images of the Dagger test engine: export, import and publish.

Containers become OCI images through ``oci.py``. The test engine has no base
image contents, so an image's one layer holds exactly the files the pipeline put
in the rootfs, and its manifest records the base reference as an annotation.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .oci import ImageSpec, image_blobs, read_oci_tarball, write_oci_tarball

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

    @staticmethod
    def spec(s: ContainerState) -> ImageSpec:
        return ImageSpec(
            platform=s.platform, tree=s.rootfs, config=s.image_config(), base_ref=s.base_ref
        )

    def write_tarball(self, states: list[ContainerState], dest: Path) -> str:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return write_oci_tarball(self.engine.store, [self.spec(s) for s in states], dest)

    def import_tarball(self, src: File, platform: str) -> ContainerState:
        from .engine import ContainerState, EngineError

        images = read_oci_tarball(self.engine.store, self.engine.store.path(src.entry()[1].blob))
        chosen = next((i for i in images if i.platform == platform), None)
        if chosen is None:
            if len(images) != 1:
                raise EngineError(f"image has no variant for platform {platform}")
            chosen = images[0]
        cfg = chosen.config
        env = tuple(tuple(e.split("=", 1)) for e in cfg.get("Env", []) if "=" in e)
        return replace(
            ContainerState(platform=chosen.platform),
            rootfs=chosen.tree,
            base_ref=chosen.base_ref,
            env=env,  # type: ignore[arg-type]
            workdir=cfg.get("WorkingDir") or "/",
            user=cfg.get("User", ""),
            entrypoint=tuple(cfg.get("Entrypoint") or ()),
            default_args=tuple(cfg.get("Cmd") or ()),
            labels=tuple(sorted((cfg.get("Labels") or {}).items())),
            exposed_ports=tuple(sorted(cfg.get("ExposedPorts") or {})),
        )

    def publish(self, states: list[ContainerState], address: str) -> str:
        """Push for real over the OCI distribution API; -> ``address@digest``.

        The digest is that of the manifest (one platform) or index (several)
        pushed, so it equals the digest of the same image exported.
        """
        from .engine import EngineError, Secret
        from .registry import PushError, parse_target, push

        top, blobs = image_blobs(self.engine.store, [self.spec(s) for s in states])
        registry = parse_target(address).registry
        username = password = ""
        for addr, user, secret_id in states[0].registry_auth:
            if parse_target(addr + "/x").registry == registry or addr == registry:
                username = user
                password = self.engine.load(secret_id, Secret).value()[1]
        try:
            digest = push(address, top, blobs, username, password)
        except PushError as exc:
            raise EngineError(str(exc)) from None
        with self._lock:
            self.published.append(
                Published(address, digest, tuple(s.platform for s in states), username)
            )
        return f"{address.split('@')[0]}@{digest}"
