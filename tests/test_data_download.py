"""HTTP downloads against a local server on 127.0.0.1: checks, atomicity, mirror fallback."""

import gzip
import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from lifelong.data import DatasetUnavailableError, mnist
from lifelong.data.cache import ChecksumError
from lifelong.data.dataset import SourceUnavailable
from lifelong.data.download import DownloadError, download, fetch_files, mirrors_from_env
from lifelong.data.idx import encode_idx
from lifelong.data.idx_files import GZ_NAMES, load_idx_mirrors


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; paths in ``server.truncate`` get half the body they announce,
    paths in ``server.slow`` answer only after 2 s."""

    def do_GET(self):  # noqa: N802 - the http.server API
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if self.path in self.server.slow:
            time.sleep(2)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.server.truncate:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.files, httpd.truncate, httpd.slow, httpd.requests = {}, set(), set(), []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_url():
    """A base URL where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _synthetic(n_train=12, n_test=5, shape=(6, 6), random=True):
    """Four MNIST-like IDX .gz files: (arrays by name, gz bytes by name, sha table).

    ``random=False`` makes structured (quickly compressible) images for the full-size test.
    """
    rng = np.random.default_rng(42)

    def images(n):
        if random:
            return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        pattern = np.add.outer(np.arange(n) % 251, np.arange(np.prod(shape)) % 5)
        return pattern.astype(np.uint8).reshape(n, *shape)

    arrays = {
        "train-images-idx3-ubyte": images(n_train),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": images(n_test),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    blobs = {f"{k}.gz": gzip.compress(encode_idx(v), compresslevel=1, mtime=0)
             for k, v in arrays.items()}
    table = {name: (hashlib.sha256(blob).hexdigest(),) for name, blob in blobs.items()}
    return arrays, blobs, table


def _serve(server, prefix, blobs):
    for name, blob in blobs.items():
        server.files[f"/{prefix}/{name}"] = blob
    return f"{server.url}/{prefix}/"


def test_download_succeeds_and_parsed_arrays_equal_the_generated_ones(server, tmp_path):
    arrays, blobs, table = _synthetic()
    base = _serve(server, "m1", blobs)
    splits = load_idx_mirrors((base,), tmp_path / "dl", table, 12, 5, (6, 6))
    np.testing.assert_array_equal(splits.x_train, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(splits.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(splits.x_test, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(splits.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert splits.y_train.dtype == np.int64
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(GZ_NAMES)
    # The verified files are reused: a second load makes no request.
    count = len(server.requests)
    load_idx_mirrors((base,), tmp_path / "dl", table, 12, 5, (6, 6))
    assert len(server.requests) == count


def test_truncated_body_is_detected_and_leaves_no_file(server, tmp_path):
    _, blobs, table = _synthetic()
    base = _serve(server, "m1", blobs)
    name = "train-images-idx3-ubyte.gz"
    server.truncate.add(f"/m1/{name}")
    with pytest.raises(DownloadError, match=rf"truncated, got {len(blobs[name]) // 2} of "
                                            rf"{len(blobs[name])} bytes"):
        download(base + name, tmp_path / name, sha256=table[name])
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_is_rejected_and_the_next_mirror_is_used(server, tmp_path):
    arrays, blobs, table = _synthetic()
    name = "t10k-images-idx3-ubyte.gz"
    bad = dict(blobs, **{name: blobs[name][:-9] + b"corrupted"})
    bad_base = _serve(server, "bad", bad)
    with pytest.raises(ChecksumError, match="does not match the expected"):
        download(bad_base + name, tmp_path / name, sha256=table[name])
    assert list(tmp_path.iterdir()) == []

    good_base = _serve(server, "good", blobs)
    splits = load_idx_mirrors((bad_base, good_base), tmp_path, table, 12, 5, (6, 6))
    np.testing.assert_array_equal(splits.x_test, arrays["t10k-images-idx3-ubyte"])
    # One request more than the files: the corrupt one, then its retry on the good mirror.
    assert server.requests[1:] == ["/bad/train-images-idx3-ubyte.gz",
                                   "/bad/train-labels-idx1-ubyte.gz",
                                   f"/bad/{name}", f"/good/{name}",
                                   "/bad/t10k-labels-idx1-ubyte.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(GZ_NAMES)


def test_unreachable_mirror_is_tried_once_then_skipped(server, dead_url, tmp_path, caplog):
    _, blobs, table = _synthetic()
    good = _serve(server, "good", blobs)
    start = time.monotonic()
    with caplog.at_level("INFO", logger="lifelong.data"):
        paths = fetch_files(GZ_NAMES, (dead_url, good), tmp_path, table)
    assert time.monotonic() - start < 5
    assert sorted(paths) == sorted(GZ_NAMES)
    assert caplog.text.count(f"Download of {dead_url}") == 1
    assert len(server.requests) == 4


def test_slow_server_times_out(server, tmp_path):
    _, blobs, table = _synthetic()
    base = _serve(server, "slow", blobs)
    name = GZ_NAMES[0]
    server.slow.add(f"/slow/{name}")
    start = time.monotonic()
    with pytest.raises(SourceUnavailable, match="timed out"):
        fetch_files([name], (base,), tmp_path, table, timeout=0.3)
    assert time.monotonic() - start < 1.9
    assert list(tmp_path.iterdir()) == []


def test_all_mirrors_bad_raises_dataset_unavailable_naming_each_source(server, dead_url,
                                                                      tmp_path):
    _, blobs, table = _synthetic()
    corrupt = _serve(server, "corrupt", {k: v[::-1] for k, v in blobs.items()})
    missing = f"{server.url}/missing/"
    with pytest.raises(DatasetUnavailableError) as info:
        mnist.build(tmp_path, mirrors=(corrupt, missing, dead_url), checksums=table,
                    use_wheel=False)
    message = str(info.value)
    assert "Dataset 'mnist' is not available" in message
    assert f"IDX files in {tmp_path / 'mnist-idx'}" in message
    assert f"HTTP mirrors ({corrupt}, {missing}, {dead_url})" in message
    assert f"{corrupt}train-images-idx3-ubyte.gz: {corrupt}train-images-idx3-ubyte.gz: " \
           "sha256" in message
    assert f"{missing}train-images-idx3-ubyte.gz: HTTP 404" in message
    assert f"{dead_url}train-images-idx3-ubyte.gz: cannot connect" in message
    assert [a[0].split(" (")[0] for a in info.value.attempts] == [
        f"IDX files in {tmp_path / 'mnist-idx'}", "HTTP mirrors"]
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_full_size_mnist_build_over_http(server, tmp_path):
    """The real mnist.build path, end to end, with synthetic 60k/10k data and its own table."""
    arrays, blobs, table = _synthetic(60_000, 10_000, (28, 28), random=False)
    base = _serve(server, "full", blobs)
    splits = mnist.build(tmp_path, mirrors=(base,), checksums=table, use_wheel=False)
    ds = mnist.SPEC.dataset(splits)
    assert ds.x_train.shape == (60_000, 28, 28) and ds.y_test.shape == (10_000,)
    np.testing.assert_array_equal(ds.x_train, arrays["train-images-idx3-ubyte"])
    downloaded = sorted(p.name for p in (tmp_path / "downloads" / "mnist").iterdir())
    assert downloaded == sorted(GZ_NAMES)


def test_mirrors_from_env(monkeypatch):
    monkeypatch.delenv("X_MIRRORS", raising=False)
    assert mirrors_from_env("X_MIRRORS", ("a",)) == ("a",)
    monkeypatch.setenv("X_MIRRORS", " http://h/a/ , http://h/b ,")
    assert mirrors_from_env("X_MIRRORS", ("a",)) == ("http://h/a/", "http://h/b")
    monkeypatch.setenv("X_MIRRORS", "")
    assert mirrors_from_env("X_MIRRORS", ("a",)) == ()
