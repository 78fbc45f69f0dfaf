"""HTTP(S) downloads that are checked (length, sha256) and atomic, and mirror lists."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from lifelong.data.cache import ChecksumError, atomic_write, sha256_file
from lifelong.data.dataset import SourceUnavailable

log = logging.getLogger("lifelong.data")

#: Seconds to wait for a connection or for the next block of data.
DEFAULT_TIMEOUT = 20.0
#: No source file of ours is near this size; a larger body is refused (protects the disk).
MAX_BYTES = 256 * 1024 * 1024
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed: bad HTTP status, truncated body, oversized body."""


def mirrors_from_env(variable: str, default: Sequence[str]) -> tuple[str, ...]:
    """Mirror base URLs from ``$variable`` (comma-separated), else ``default``.

    Setting the variable to an empty string disables HTTP downloads for that dataset.
    """
    value = os.environ.get(variable)
    if value is None:
        return tuple(default)
    return tuple(part.strip() for part in value.split(",") if part.strip())


def join_url(base: str, filename: str) -> str:
    """``base`` + ``/`` + ``filename`` with exactly one slash between them."""
    return base.rstrip("/") + "/" + filename


def download(url: str, dest: Path, *, sha256: Collection[str],
             timeout: float = DEFAULT_TIMEOUT, max_bytes: int = MAX_BYTES) -> Path:
    """Download ``url`` to ``dest``, accepting it only if its sha256 is one of ``sha256``.

    The body is streamed into a temp file next to ``dest`` and renamed only after the length
    (``Content-Length``, when sent) and the checksum are right; on any failure nothing is left
    behind. Raises :class:`DownloadError` (an ``OSError``), ``urllib.error.URLError`` or
    :class:`~lifelong.data.cache.ChecksumError`.
    """
    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "lifelong-data/1"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length_header = response.headers.get("Content-Length")
            try:
                expected = int(length_header) if length_header is not None else None
            except ValueError:
                raise DownloadError(f"{url}: bad Content-Length {length_header!r}") from None
            if expected is not None and expected > max_bytes:
                raise DownloadError(f"{url}: {expected} bytes is more than the {max_bytes} "
                                    "allowed")
            log.info("Downloading %s (%s)", url,
                     f"{expected / 1e6:.1f} MB" if expected is not None else "size unknown")
            digest = hashlib.sha256()
            received = 0
            with atomic_write(dest) as f:
                while block := response.read(_CHUNK):
                    received += len(block)
                    if received > max_bytes:
                        raise DownloadError(f"{url}: body exceeds {max_bytes} bytes")
                    digest.update(block)
                    f.write(block)
                if expected is not None and received != expected:
                    raise DownloadError(f"{url}: truncated, got {received} of {expected} bytes")
                actual = digest.hexdigest()
                if actual not in sha256:
                    raise ChecksumError(url, actual, sha256)
    except http.client.HTTPException as error:  # e.g. IncompleteRead: not an OSError
        raise DownloadError(f"{url}: {type(error).__name__}: {error}") from error
    log.info("Downloaded %s: %.1f MB in %.1f s, sha256 ok", dest.name, received / 1e6,
             time.monotonic() - start)
    return dest


def describe_download_error(error: BaseException) -> str:
    """A short reason for a failed download."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot connect ({error.reason})"
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def _is_connection_failure(error: BaseException) -> bool:
    """True when the mirror itself is unreachable (so its other files need not be tried)."""
    if isinstance(error, urllib.error.HTTPError):
        return False
    return isinstance(error, (urllib.error.URLError, TimeoutError, ConnectionError))


def fetch_files(filenames: Sequence[str], mirrors: Sequence[str], dest_dir: Path,
                checksums: Mapping[str, Collection[str]], *,
                timeout: float = DEFAULT_TIMEOUT) -> dict[str, Path]:
    """Get each of ``filenames`` into ``dest_dir`` from the first mirror that serves it intact.

    A file already in ``dest_dir`` with a good checksum is reused; one with a bad checksum is
    replaced. A mirror that cannot be reached is skipped for the remaining files. Raises
    :class:`SourceUnavailable` listing every mirror's failure when some file cannot be had.
    """
    if not mirrors:
        raise SourceUnavailable("no mirrors configured")
    dest_dir = Path(dest_dir)
    paths: dict[str, Path] = {}
    unreachable: dict[str, str] = {}  # mirror -> why it could not be reached
    for name in filenames:
        accepted = checksums.get(name, ())
        if not accepted:
            raise ValueError(f"no sha256 known for {name}; refusing to download it unchecked")
        target = dest_dir / name
        if target.is_file():
            if sha256_file(target) in accepted:
                paths[name] = target
                continue
            log.warning("%s has a wrong sha256; downloading it again", target)
        failures: list[str] = []
        for base in mirrors:
            url = join_url(base, name)
            if base in unreachable:
                failures.append(f"{url}: not tried, mirror unreachable ({unreachable[base]})")
                continue
            try:
                paths[name] = download(url, target, sha256=accepted, timeout=timeout)
                break
            except (OSError, ValueError) as error:
                reason = describe_download_error(error)
                log.info("Download of %s failed: %s", url, reason)
                failures.append(f"{url}: {reason}")
                if _is_connection_failure(error):
                    unreachable[base] = reason
        else:
            raise SourceUnavailable(f"could not get {name}:\n" + "\n".join(failures))
    return paths
