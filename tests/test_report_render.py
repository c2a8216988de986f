"""report.html rendered by a real browser: headless Chromium (Debian's `chromium`, which .ci/run
installs when it can). A screenshot must not be blank, must have the window's size, and the
verdict badge at the top must carry the verdict's colour."""

import shutil
import subprocess

import numpy as np
import pytest
from cli_helpers import DECIDED_BY_CONSTRUCTION
from click.testing import CliRunner
from PIL import Image

from harden.cli import cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FAST = ["--images", "2", "--iters", "2", "--queries", "5", "--divergence-steps", "2", "--eot", "2", "--draws", "2",
        "--eps", "8/255", "--attack", "fgsm,pgd", "--no-progress"]  # fmt: skip
# html_page.py's .pass / .inconclusive backgrounds
BADGE = {"pass": (0xD8, 0xF5, 0xD8), "inconclusive": (0xFB, 0xE7, 0xB5)}
WINDOW = (1400, 1600)


def _screenshot(page, png):
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}", page.as_uri()]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _colour_pixels(region, colour):
    return int((np.abs(region - np.array(colour)).max(axis=2) <= 3).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's chromium as root)")
# both verdicts decided by construction: every sampled gate cleared at its range's edge; and one
# image, on which no sampled gate decides (docs/verdicts.md §2)
@pytest.mark.parametrize(("verdict", "extra"), [("pass", [*DECIDED_BY_CONSTRUCTION]),
                                                ("inconclusive", ["--images", "1"])])  # fmt: skip
def test_report_renders_with_the_verdict_coloured(fp32_export, tmp_path, verdict, extra):
    report = tmp_path / "report"
    result = CliRunner().invoke(cli, ["verify", str(fp32_export), "--twin", "graph", "--out", str(report),
                                      *FAST, *extra])  # fmt: skip
    assert result.exit_code == (0 if verdict == "pass" else 3), result.output
    pixels = _screenshot(report / "report.html", tmp_path / "page.png")
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert pixels.std() > 20  # not a blank page
    header = pixels[:120]  # the <h1> with the verdict badge
    other = "inconclusive" if verdict == "pass" else "pass"
    assert _colour_pixels(header, BADGE[verdict]) > 200, "the verdict badge is missing or not coloured"
    assert _colour_pixels(header, BADGE[other]) == 0
