"""The HTML report renders in headless Chromium with every plot image decoded."""

import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import threading

import pytest

from rtnstream.calibration.characterize import characterize
from rtnstream.calibration.detector_sim import CameraModel, CameraSimulator, write_camera_series
from rtnstream.calibration.report import write_report

_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM = next((shutil.which(n) for n in _NAMES if shutil.which(n)), None)

# A page beside the report that loads it in a same-origin iframe and writes, once it has loaded, what
# every <img> of the report decoded to into its own DOM, which `--dump-dom` prints.
_CHECK_PAGE = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="report" src="report.html" width="1200" height="800"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {
  // The iframe's load event waits for all its images: each is now decoded (naturalWidth > 0) or broken.
  var doc = this.contentDocument;
  var imgs = Array.prototype.slice.call(doc.images);
  document.getElementById("result").textContent = JSON.stringify({
    title: doc.title,
    images: imgs.map(function (img) {
      return {src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0};
    })
  });
});
</script></body></html>"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Keep the test output free of one line per request."""


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    sim = CameraSimulator(CameraModel(shape=(64, 64)), seed=4)
    truth = write_camera_series(tmp_path_factory.mktemp("cam"), sim, n_bias=20, n_flat_pixel=12,
                                dark_exptimes_s=(0.0, 300.0), flat_exptimes_s=(1.0, 2.0, 4.0))
    files = truth["files"]
    out = tmp_path_factory.mktemp("report")
    write_report(characterize(files["bias"], files["dark"], files["flat"]), out)
    return out


@pytest.fixture()
def served(report_dir):
    """Serve the report folder over HTTP on the loopback interface."""
    (report_dir / "check.html").write_text(_CHECK_PAGE)
    handler = functools.partial(_QuietHandler, directory=str(report_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _render(url, profile):
    """Load ``url`` in headless Chromium and return the JSON the check page wrote."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
           "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="result">(\{.*?\})</pre>', done.stdout, re.S)
    assert match, f"check page did not finish; chromium exit {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")
def test_report_renders_with_every_image(served, report_dir, tmp_path):
    expected = json.loads((report_dir / "report.json").read_text())["files"]["plots"]
    assert len(expected) == 15  # the paper's 12 figures, EMVA 1288 photon transfer, SNR and non-uniformity
    page = _render(f"{served}/check.html", tmp_path / "profile")
    assert page["title"] == "Camera characterization"
    assert sorted(img["src"] for img in page["images"]) == sorted(expected)
    broken = [img["src"] for img in page["images"] if not img["ok"]]
    assert not broken, f"images that did not decode: {broken}"

    # Negative control: the check does see an image that cannot be decoded.
    (report_dir / expected[0]).write_bytes(b"not a png")
    page = _render(f"{served}/check.html", tmp_path / "profile2")
    assert [img["src"] for img in page["images"] if not img["ok"]] == [expected[0]]
