"""``/docs`` works without internet: Swagger UI's assets come from the service itself (fastapi-offline), checked
in headless Chromium with every address but the loopback one cut off and every request it made logged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from rtnstream.service.server import BackgroundServer
from tests.service._support import service_settings

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "offline-docs.png"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    with BackgroundServer(service_settings(tmp_path_factory.mktemp("docs"))) as server:
        yield server


def test_docs_page_refers_only_to_the_services_own_assets(docs_server):
    page = httpx.get(f"{docs_server.url}/docs").text
    scripts = [line for line in page.splitlines() if "src=" in line or "href=" in line]
    assert scripts and all("http" not in line for line in scripts), scripts  # no CDN: relative URLs only
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        r = httpx.get(f"{docs_server.url}/static-offline-docs/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000, asset


def _chromium(url: str, profile: Path, netlog: Path, *action: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url`` with no way out: every host name resolves to nothing and every
    connection but a loopback one goes to a closed proxy port; its requests are logged to ``netlog``."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
           f"--log-net-log={netlog}", "--net-log-capture-mode=Default", "--window-size=1280,1400",
           "--virtual-time-budget=15000", *action, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _page_requests(netlog: Path, site: str) -> set[str]:
    """Every URL requested on behalf of pages of ``site`` (their network isolation key), from Chromium's
    NetLog: the page's own loads, whatever their destination. (Chromium's background requests of its own,
    update and time checks, have other keys; the cut stops them too.)"""
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return {e["params"]["url"] for e in log["events"] if e["type"] == start_job and "params" in e
            and e["params"].get("network_isolation_key", "").startswith(f"{site} ")}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")
def test_docs_render_every_operation_offline_in_chromium(docs_server, tmp_path):
    spec = httpx.get(f"{docs_server.url}/openapi.json").json()
    operations = [(path, op["operationId"], op.get("tags", ["default"])[0])
                  for path, item in spec["paths"].items() for op in item.values()]
    assert len(operations) >= 8
    url = f"{docs_server.url}/docs"
    done = _chromium(url, tmp_path / "profile", tmp_path / "dom.netlog", "--dump-dom")
    dom = done.stdout
    assert 'class="swagger-ui' in dom, f"Swagger UI did not start; chromium exit {done.returncode}: " \
                                       f"{done.stderr[-2000:]}"
    for path, operation_id, tag in operations:
        assert f'id="operations-{tag}-{operation_id}"' in dom, operation_id  # each operation rendered
        assert path.replace("{", "").replace("}", "") in dom.replace("\u200b", "").replace("{", "").replace(
            "}", ""), path
    requested = _page_requests(tmp_path / "dom.netlog", "http://127.0.0.1")
    assert {f"{docs_server.url}/{p}" for p in ("docs", "openapi.json", "static-offline-docs/swagger-ui.css",
                                               "static-offline-docs/swagger-ui-bundle.js")} <= requested
    outside = sorted(u for u in requested if urlsplit(u).hostname not in LOOPBACK)
    assert outside == [], "requests of the page that would leave the machine"

    shot = tmp_path / "offline-docs.png"
    done = _chromium(url, tmp_path / "profile2", tmp_path / "shot.netlog", f"--screenshot={shot}")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr[-2000:]
    if os.environ.get("RTNSTREAM_UPDATE_SCREENSHOTS") == "1":  # docs/offline-docs.png: the page, offline
        SCREENSHOT.write_bytes(shot.read_bytes())
