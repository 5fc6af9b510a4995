"""The operator dashboard at ``/``: its own assets, the PNG pictures it shows (checked pixel for pixel against
the offline engine), the Prometheus exposition it sits beside, and the page itself in a real headless Chromium
(Debian's, driven by Playwright) with a running job: live figures, pictures, no console error, no request to
any other host."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameSender
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.service.images import corrections_map, frame_preview, offset_map
from rtnstream.service.server import BackgroundServer
from tests.service._support import N_FRAMES, SHAPE, loopback, offline, service_settings

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
SETTINGS = EngineSettings(window=10)
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def png_pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.fixture(scope="module")
def cube_id(api, sim) -> str:
    return api.upload_cube(sim.cube_path)["id"]


@pytest.fixture(scope="module")
def finished_series(api, cube_id, sim) -> str:
    """A job that corrected one whole series (ended) and still runs: its pictures are deterministic."""
    ingest = loopback()
    job_id = api.create_job("cam-done", cube_id, ingest, loopback(), window=SETTINGS.window)
    with FrameSender(ingest, "cam-done") as tx:
        tx.start_series("s1")
        for f in sim.frames:
            tx.send_frame(f)
        tx.end_series()
        api.wait_until(job_id, lambda j: j["counters"]["series_finished"] == 1)
    yield job_id
    api.stop_job(job_id)


class Camera:
    """Frames of the simulated sensor pushed to a job's ingest at about 20 frames/s, series after series,
    until closed (bounded: at most ``max_frames``)."""

    def __init__(self, ingest: str, camera: str, frames: np.ndarray, max_frames: int = 6000) -> None:
        self.sender = FrameSender(ingest, camera)
        self.frames, self.max_frames = frames, max_frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sent = 0
        while sent < self.max_frames and not self._stop.is_set():
            self.sender.start_series()
            for f in self.frames:
                if self._stop.wait(0.05):
                    break
                self.sender.send_frame(f)
                sent += 1
            self.sender.end_series()

    def __enter__(self) -> Camera:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sender.close()


@pytest.fixture
def streaming_job(api, cube_id, sim) -> Iterator[str]:
    ingest = loopback()
    job_id = api.create_job("cam-live", cube_id, ingest, loopback(), window=SETTINGS.window)
    with Camera(ingest, "cam-live", sim.frames):
        api.wait_until(job_id, lambda j: j["counters"]["frames_out"] > 0)
        yield job_id
    if api.get_job(job_id)["live"]:
        api.stop_job(job_id)


def test_the_page_and_its_assets_are_the_services_own(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert set(refs) == {"data:,", "dashboard/dashboard.css", "dashboard/dashboard.js"}  # relative: no CDN
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        r = httpx.get(f"{server.url}/dashboard/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 500
    assert "://" not in httpx.get(f"{server.url}/dashboard/dashboard.js").text.replace(
        "http://www.w3.org/2000/svg", "")  # the SVG namespace is a name, not a request
    assert httpx.get(f"{server.url}/dashboard/../app.py").status_code == 404
    assert httpx.get(f"{server.url}/dashboard/dashboard.html").status_code == 404


def test_the_pictures_are_the_last_frame_the_corrections_and_the_bias_offset_map(server, api, sim,
                                                                                finished_series):
    job_id = finished_series
    want = offline(sim.cube, sim.frames, SETTINGS)
    preview = png_pixels(httpx.get(f"{server.url}/v1/jobs/{job_id}/preview.png"))
    assert preview.shape == SHAPE and preview.dtype == np.uint8
    np.testing.assert_array_equal(preview, frame_preview(want[-1].data))  # the last frame published
    small = png_pixels(httpx.get(f"{server.url}/v1/jobs/{job_id}/preview.png", params={"max_side": 16}))
    assert small.shape == (12, 16)  # 64 / 16: every 4th pixel

    engine = RTNEngine(sim.cube, SETTINGS, backend="numpy")
    for f in sim.frames:
        engine.push(f)
    engine.finish()
    maps = engine.pixel_counters()
    n = (maps["n_lo"] + maps["n_hi"]).reshape(-1)
    index = np.flatnonzero(n)
    assert index.size > 0
    where = png_pixels(httpx.get(f"{server.url}/v1/jobs/{job_id}/corrections.png"))
    np.testing.assert_array_equal(where, corrections_map(SHAPE, index, n[index]))
    assert where.shape == (*SHAPE, 3) and (where.sum(axis=2) > 0).sum() == index.size  # lit where corrected

    offsets = png_pixels(httpx.get(f"{server.url}/v1/jobs/{job_id}/bias-offset.png",
                                   params={"series": "s1", "index": 1}))
    np.testing.assert_array_equal(offsets, offset_map(api.bias_offset(job_id, "s1")))
    assert (offsets != 255).any()  # not all white: some offsets


def test_picture_errors_use_the_envelope(server, api, cube_id, finished_series):
    def error(path: str, **params) -> tuple[int, str]:
        r = httpx.get(f"{server.url}{path}", params=params)
        return r.status_code, r.json()["error"]["code"]

    assert error("/v1/jobs/0123456789ab/preview.png") == (404, "not_found")
    assert error("/v1/jobs/not-a-job/corrections.png") == (404, "not_found")
    assert error(f"/v1/jobs/{finished_series}/preview.png", max_side=8) == (422, "invalid_request")
    assert error(f"/v1/jobs/{finished_series}/bias-offset.png", series="nope") == (404, "not_found")
    idle = api.create_job("cam-idle", cube_id, loopback(), loopback())
    assert error(f"/v1/jobs/{idle}/preview.png") == (404, "not_found")  # no frame yet
    api.stop_job(idle)
    assert error(f"/v1/jobs/{idle}/preview.png") == (409, "not_running")
    assert error(f"/v1/jobs/{idle}/corrections.png") == (409, "not_running")


def test_metrics_counters_histogram_one_label_set_per_job_redis_up_and_all_documented(server, api, finished_series):
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}
    for name in ("frames_in", "frames_out", "dropped", "passthrough", "abandoned", "vetoed", "rejected",
                 "corrections", "series_finished"):
        assert families[f"rtnstream_{name}"].type == "counter", name
    for name in ("throughput_fps", "queue_depth", "in_flight", "job_running", "redis_up"):
        assert families[f"rtnstream_{name}"].type == "gauge", name
    assert [s.value for s in families["rtnstream_redis_up"].samples] == [1.0]
    frames_in = [s for s in families["rtnstream_frames_in"].samples if s.labels["job"] == finished_series]
    assert len(frames_in) == 1 and frames_in[0].labels == {"job": finished_series, "camera": "cam-done"}
    assert frames_in[0].value == N_FRAMES
    hist = families["rtnstream_latency_seconds"]
    assert hist.type == "histogram"
    mine = [s for s in hist.samples if s.labels["job"] == finished_series and s.labels["source"] == "arrival"]
    assert {s.name for s in mine} == {"rtnstream_latency_seconds_bucket", "rtnstream_latency_seconds_sum",
                                      "rtnstream_latency_seconds_count"}
    count = next(s.value for s in mine if s.name.endswith("_count"))
    inf = next(s.value for s in mine if s.name.endswith("_bucket") and s.labels["le"] == "+Inf")
    assert count == inf == N_FRAMES

    documented = set(re.findall(r"^\| `(rtnstream_\w+)` \| (\w+)", DOCS.read_text(), re.MULTILINE))
    exported = {(f"{f.name}_total" if f.type == "counter" else f.name, f.type) for f in families.values()}
    assert documented == exported  # docs/service.md names every metric, with its type, and no other


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")
def test_the_dashboard_in_chromium_shows_a_running_job_live_and_asks_only_the_service(server, api, streaming_job):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
    job_id = streaming_job
    service = urlsplit(server.url).netloc
    requests, problems = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))

            def route(r):  # every request is logged; one for another host never leaves the machine
                requests.append(r.request.url)
                if urlsplit(r.request.url).netloc == service:
                    r.continue_()
                else:
                    r.abort()

            page.route("**/*", route)
            page.goto(f"{server.url}/")
            row = page.locator(f'#jobs tr[data-job="{job_id}"]')
            row.wait_for(timeout=20_000)
            assert row.locator("td.camera").inner_text() == "cam-live"
            assert row.locator("td.state").inner_text() == "running"
            assert row.locator("td.backend").inner_text() == "numpy"
            page.wait_for_function(f"""() => {{
                const fps = document.querySelector('#jobs tr[data-job="{job_id}"] td.fps');
                return fps && parseFloat(fps.textContent) > 0; }}""", timeout=20_000)
            first = int(row.locator("td.out").inner_text())
            page.wait_for_function(f"""() => parseInt(document.querySelector(
                '#jobs tr[data-job="{job_id}"] td.out').textContent) > {first}""", timeout=20_000)  # live
            page.wait_for_function("""() => {
                const line = document.querySelector('#chart-fps polyline');
                return line && line.getAttribute('points').split(' ').length >= 3; }""", timeout=20_000)
            preview = page.locator(f'.view[data-job="{job_id}"] img.preview')
            page.wait_for_function(f"""() => {{
                const img = document.querySelector('.view[data-job="{job_id}"] img.preview');
                return img && img.complete && img.naturalWidth === {SHAPE[1]}; }}""", timeout=20_000)
            assert preview.evaluate("img => img.naturalHeight") == SHAPE[0]
            page.wait_for_function(f"""() => {{
                const img = document.querySelector('.view[data-job="{job_id}"] img.bias-offset');
                return img && img.complete && img.naturalWidth === {SHAPE[1]}; }}""", timeout=30_000)
            page.locator(f'#cubes tr td:text-is("{SHAPE[0]} x {SHAPE[1]}")').wait_for(timeout=20_000)

            assert row.locator("button").count() == 0  # read-only without a token
            page.fill("#token", "any")  # this service has no token: any bearer is accepted
            page.click("#token-form button[type=submit]")
            page.locator(f'#jobs tr[data-job="{job_id}"] button.stop').click(timeout=20_000)
            page.locator(f'#jobs tr[data-job="{job_id}"] td.state:text-is("stopped")').wait_for(timeout=60_000)
            page.locator(f'#jobs tr[data-job="{job_id}"] button.start').click(timeout=20_000)
            again = page.locator('#jobs tr:has(td.camera:text-is("cam-live")):has(td.state:text-is("running"))')
            again.wait_for(timeout=30_000)  # a new job with the same configuration, fed by the same camera
            restarted = again.get_attribute("data-job")
            assert restarted != job_id
            api.wait_until(restarted, lambda j: j["config"]["ingest"] == api.get_job(job_id)["config"]["ingest"]
                           and j["counters"]["frames_out"] > 0)
            api.stop_job(restarted)
        finally:
            browser.close()
    assert problems == []
    assert requests and {urlsplit(u).netloc for u in requests} == {service}, sorted(set(requests))
    assert {urlsplit(u).path for u in requests} >= {"/", "/dashboard/dashboard.js", "/dashboard/dashboard.css",
                                                     "/v1/jobs", "/readyz", f"/v1/jobs/{job_id}/preview.png"}


def _read_until(proc: subprocess.Popen, needle: str, timeout_s: float = 120.0) -> str:
    """Lines of ``proc``'s stdout up to the first that holds ``needle`` (that line returned)."""
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            if needle in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert found, f"{needle!r} not printed within {timeout_s} s (exit {proc.poll()})"
    return found[0]


def test_demo_prints_the_dashboard_and_lingers_until_ctrl_c(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "rtnstream", "demo", "--frames", "300", "--fps", "25",
                             "--shape", "128", "192", "--backend", "numpy", "--linger", "inf"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/", _read_until(proc, "dashboard:")).group(1)
        assert httpx.get(f"{url}/").status_code == 200
        if CHROMIUM is not None and importlib.util.find_spec("playwright") is not None:
            _screenshot(url, tmp_path / "dashboard.png")
        _read_until(proc, "the service stays up")
        (job,) = httpx.get(f"{url}/v1/jobs").json()["jobs"]
        assert job["state"] == "running" and job["counters"]["frames_out"] == 300  # all corrected, still up
        assert httpx.get(f"{url}/v1/jobs/{job['id']}/preview.png").status_code == 200
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0 and "summary" in out and "300 out of 300 in" in out


def _screenshot(url: str, path: Path) -> None:
    """A screenshot of the dashboard during the demo, once its series ended and its three pictures are there
    (``RTNSTREAM_UPDATE_SCREENSHOTS=1``: written to docs/dashboard.png)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/")
            page.wait_for_function("""() => {
                const imgs = [...document.querySelectorAll('.view img')];
                return imgs.length === 3 && imgs.every(img => img.complete && img.naturalWidth > 0); }""",
                                   timeout=120_000)
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("RTNSTREAM_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.write_bytes(path.read_bytes())


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")
def test_the_pages_stop_button_sends_the_token_entered_and_changes_nothing_with_a_wrong_one(tmp_path, sim):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
    with BackgroundServer(service_settings(tmp_path / "service", token="s3cret")) as server, \
            ControlClient(server.url, token="s3cret") as api:
        job_id = api.create_job("cam-guarded", api.upload_cube(sim.cube_path)["id"], loopback(), loopback())
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--disable-dev-shm-usage"])
            try:
                page = browser.new_page()
                page.goto(f"{server.url}/")
                row = page.locator(f'#jobs tr[data-job="{job_id}"]')
                row.locator('td.state:text-is("running")').wait_for(timeout=20_000)
                assert row.locator("button").count() == 0  # read-only without a token
                for given in ("wrong", "s3cret"):
                    page.fill("#token", given)
                    page.click("#token-form button[type=submit]")
                    row.locator("button.stop").click(timeout=20_000)
                    if given == "wrong":
                        page.locator('#message:has-text("unauthorized")').wait_for(timeout=20_000)
                        assert api.get_job(job_id)["state"] == "running"  # nothing changed
                row.locator('td.state:text-is("stopped")').wait_for(timeout=60_000)
            finally:
                browser.close()
        assert api.get_job(job_id)["state"] == "stopped"
