"""The docker CLI as deploy/image/build.sh hands it over (``DOCKER``, default ``docker``), and the
image's size as a registry sees it."""

from __future__ import annotations

import os
import shlex
import subprocess

__all__ = ["docker_command", "gzipped_size", "image_size", "inspect_size"]


def docker_command() -> list[str]:
    return shlex.split(os.environ.get("DOCKER", "docker"))


def inspect_size(name: str) -> int:
    """The image's uncompressed size, as `docker image inspect` reports it."""
    done = subprocess.run(
        [*docker_command(), "image", "inspect", "--format", "{{.Size}}", name],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout)


def gzipped_size(image: str) -> int:
    """What `docker save | gzip -6` makes of the image: about what a registry stores and pulls."""
    save = subprocess.Popen([*docker_command(), "save", image], stdout=subprocess.PIPE)
    gzip = subprocess.Popen(["gzip", "-6"], stdin=save.stdout, stdout=subprocess.PIPE)
    assert save.stdout is not None and gzip.stdout is not None
    save.stdout.close()
    total = 0
    while chunk := gzip.stdout.read(1 << 20):
        total += len(chunk)
    if gzip.wait() != 0 or save.wait() != 0:
        raise RuntimeError(f"docker save {image} | gzip failed")
    return total


def image_size(image: str, gzipped: bool = True) -> str:
    """One line: the image's size uncompressed and, with ``gzipped``, compressed."""
    line = f"image {image}: {inspect_size(image) / 1e6:,.0f} MB uncompressed"
    if gzipped:
        line += f", {gzipped_size(image) / 1e6:,.0f} MB gzipped (docker save | gzip -6)"
    return line
