"""Get a Debian package's files without installing it: ``apt-get download`` + ``dpkg -x``.

Neither step needs root: ``apt-get download`` fetches the ``.deb`` from the configured
archives into the current directory and ``dpkg -x`` unpacks it into any directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from lifelong.data.dataset import SourceUnavailable

log = logging.getLogger("lifelong.data")

#: Seconds allowed for ``apt-get download`` (the Fashion-MNIST package is 31 MB).
APT_TIMEOUT = 600.0


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (result.stderr + result.stdout).splitlines()
             if line.strip() and not line.startswith("W: Download is performed unsandboxed")]
    return " | ".join(lines[-3:]) if lines else f"exit status {result.returncode}"


def cached_deb(package: str, directory: Path) -> Path | None:
    """The newest-named ``<package>_*.deb`` already in ``directory``, if any."""
    if not Path(directory).is_dir():
        return None
    matches = sorted(Path(directory).glob(f"{package}_*.deb"))
    return matches[-1] if matches else None


def apt_download(package: str, directory: Path) -> Path:
    """Download ``package``'s ``.deb`` into ``directory`` (reusing one already there).

    ``apt-get download`` runs in a temp directory inside ``directory`` and the ``.deb`` is
    moved into place only on success. Raises :class:`SourceUnavailable` when ``apt-get`` is
    missing or fails (e.g. stale package lists: ``apt-get update`` fixes that).
    """
    directory = Path(directory)
    cached = cached_deb(package, directory)
    if cached is not None:
        return cached
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise SourceUnavailable("apt-get not found (not a Debian/Ubuntu system)")
    directory.mkdir(parents=True, exist_ok=True)
    log.info("Downloading the Debian package %s with apt-get", package)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".apt-download-") as tmp:
        try:
            result = subprocess.run([apt_get, "download", package], cwd=tmp, capture_output=True,
                                    text=True, timeout=APT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise SourceUnavailable(f"apt-get download took over {APT_TIMEOUT:.0f} s") from None
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if result.returncode != 0 or not debs:
            raise SourceUnavailable(f"apt-get download {package} failed: {_tail(result)}")
        target = directory / debs[0].name
        os.replace(debs[0], target)
    log.info("Downloaded %s (%.1f MB) in %.1f s", target.name, target.stat().st_size / 1e6,
             time.monotonic() - start)
    return target


def extract_deb(deb: Path, destination: Path) -> None:
    """Unpack the files of ``deb`` under ``destination`` with ``dpkg -x``."""
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        raise SourceUnavailable("dpkg not found")
    result = subprocess.run([dpkg, "-x", str(deb), str(destination)], capture_output=True,
                            text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise SourceUnavailable(f"dpkg -x {deb.name} failed: {_tail(result)}")
