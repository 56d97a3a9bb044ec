"""The docker CLI as deploy/image/build.sh hands it over (``DOCKER``, default ``docker``), and the
image's size as a registry sees it."""

from __future__ import annotations

import os
import shlex
import subprocess

__all__ = ["GzippedSize", "docker_command", "inspect_size"]


def docker_command() -> list[str]:
    return shlex.split(os.environ.get("DOCKER", "docker"))


def inspect_size(name: str) -> int:
    """The image's uncompressed size, as `docker image inspect` reports it."""
    done = subprocess.run(
        [*docker_command(), "image", "inspect", "--format", "{{.Size}}", name],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout)


class GzippedSize:
    """`docker save IMAGE | gzip -6 | wc -c`, started at once: about what a registry stores and
    pulls. ``result()`` waits for it; ``cancel()`` stops it."""

    def __init__(self, image: str) -> None:
        self.image = image
        self._save = subprocess.Popen([*docker_command(), "save", image], stdout=subprocess.PIPE)
        self._gzip = subprocess.Popen(["gzip", "-6"], stdin=self._save.stdout, stdout=subprocess.PIPE)
        self._count = subprocess.Popen(
            ["wc", "-c"], stdin=self._gzip.stdout, stdout=subprocess.PIPE, text=True
        )
        for pipe in (self._save.stdout, self._gzip.stdout):
            if pipe is not None:
                pipe.close()  # each pipe is read by the next process only

    def result(self) -> int:
        out, _ = self._count.communicate()
        if self._gzip.wait() != 0 or self._save.wait() != 0:
            raise RuntimeError(f"docker save {self.image} | gzip failed")
        return int(out.strip())

    def cancel(self) -> None:
        for process in (self._save, self._gzip, self._count):
            process.kill()
            process.wait()

    def line(self) -> str:
        """One line: the image's size uncompressed and gzipped."""
        return (
            f"image {self.image}: {inspect_size(self.image) / 1e6:,.0f} MB uncompressed, "
            f"{self.result() / 1e6:,.0f} MB gzipped (docker save | gzip -6)"
        )
