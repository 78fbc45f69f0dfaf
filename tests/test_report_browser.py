"""The HTML report rendered by a real browser: headless Chromium loads it and draws it.

Needs Debian's ``chromium`` (``scripts/ensure_chromium.sh`` installs it); skipped when absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

from matplotlib import image  # noqa: E402

from lifelong.experiments.run_config import RunConfig, run_experiment  # noqa: E402
from lifelong.report import write_report  # noqa: E402

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed "
                                "(run scripts/ensure_chromium.sh)")
METHODS = ("finetune", "joint", "independent")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile and no network features."""
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report of real tiny runs: three methods, two seeds, three split-digits tasks."""
    root = tmp_path_factory.mktemp("browser")
    for seed in (0, 1):
        for method in METHODS:
            config = RunConfig(benchmark="split-digits", method=method, seed=seed, tasks=3,
                               benchmark_params={"train_per_task": 40, "test_per_task": 20})
            run_experiment(config, out_dir=root / "runs" / f"seed{seed}" / method)
    return write_report([root / "runs"], root / "report.html")


def test_rendered_dom_has_the_table_and_the_images(report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    assert '<table class="comparison">' in dom
    for method in METHODS:
        assert f"<td>{method}</td>" in dom
    # one heatmap per method, plus the stream panels and the ACC/BWT bars
    assert dom.count("<img") == len(METHODS) + 2
    assert dom.count('src="data:image/png;base64,') == len(METHODS) + 2


def test_screenshot_shows_the_figures(report, tmp_path):
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    rgb = np.round(pixels * 255).astype(np.int64)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert len(colours) > 1000
    assert np.mean(np.all(pixels > 0.98, axis=-1)) < 0.9  # not blank
    saturated = pixels.max(axis=-1) - pixels.min(axis=-1) > 0.3  # the viridis heatmaps, coloured bars
    assert saturated.mean() > 0.02
