"""Independent checks of OCI images, for tests.

Anything the test engine writes is read back here with skopeo (containers/image),
never with the engine's own OCI code, so a shared misunderstanding between writer
and reader cannot pass unnoticed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest


def require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed (Debian package {tool})")
    return path


def skopeo(*args: str) -> str:
    require("skopeo")
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _remote(image: str, creds: str, prefix: str = "") -> list[str]:
    if not image.startswith("docker://"):
        return []
    return [f"--{prefix}tls-verify=false"] + ([f"--{prefix}creds", creds] if creds else [])


def inspect_config(image: str, arch: str = "", creds: str = "") -> dict:
    """``image`` is a transport reference: ``oci-archive:/x.tar`` or ``docker://host/r:t``."""
    extra = ["--override-arch", arch, "--override-os", "linux"] if arch else []
    return json.loads(skopeo(*extra, "inspect", *_remote(image, creds), "--config", image))


def inspect_raw(image: str, creds: str = "") -> dict:
    return json.loads(skopeo("inspect", *_remote(image, creds), "--raw", image))


def extract_file(image: str, path: str, dest: Path, arch: str = "", creds: str = "") -> Path:
    """Copy one platform of ``image`` to a plain directory with skopeo, then take
    ``path`` out of its layers (the last layer that has it wins)."""
    extra = ["--override-arch", arch, "--override-os", "linux"] if arch else []
    with tempfile.TemporaryDirectory() as tmp:
        skopeo(*extra, "copy", *_remote(image, creds, "src-"), image, f"dir:{tmp}")
        manifest = json.loads(Path(tmp, "manifest.json").read_text())
        key = path.lstrip("/")
        found = False
        for layer in manifest["layers"]:
            blob = Path(tmp, layer["digest"].split(":", 1)[1])
            with tarfile.open(blob) as tar:
                for member in tar.getmembers():
                    if member.name.lstrip("./") == key and member.isfile():
                        fh = tar.extractfile(member)
                        assert fh is not None
                        dest.write_bytes(fh.read())
                        dest.chmod(member.mode)
                        found = True
        if not found:
            raise AssertionError(f"{path} is not in any layer of {image}")
    return dest


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


ELF_X86_64 = 62
ELF_AARCH64 = 183
ELF_ARM = 40
