"""What serving sets up around uvicorn: threshold tables built at start, the open-file limit."""

import resource

import pytest

from rtnstream.clients.control import ControlClient
from rtnstream.kernels.lut import clear_table_cache, table_cache_path
from rtnstream.service.server import BackgroundServer, raise_open_file_limit
from tests.service._support import loopback, service_settings, wait_for

ALPHA = 0.0042  # no other test uses it: its table exists only if the server built it


@pytest.fixture
def empty_table_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RTNSTREAM_CACHE", str(tmp_path / "cache"))
    clear_table_cache()
    yield tmp_path / "cache"
    clear_table_cache()


def test_tables_of_lut_alphas_are_built_at_start_not_in_a_job_request(tmp_path, empty_table_cache, sim):
    # Issue 10 (alpha per job): the table of a new alpha cost seconds of CPU in POST /v1/jobs. The alphas
    # in lut_alphas are built in the background as the service starts, before any request asks for them.
    settings = service_settings(tmp_path / "data", lut_alphas=[ALPHA])
    with BackgroundServer(settings) as server, ControlClient(server.url) as api:
        wait_for(lambda: table_cache_path(ALPHA).is_file(), 300, "threshold table built at start")
        cube_id = api.upload_cube(sim.cube_path)["id"]
        job = api.create_job("cam", cube_id, loopback(), loopback(), alpha=ALPHA)
        assert api.get_job(job)["config"]["alpha"] == ALPHA
        api.stop_job(job)
    assert sorted(p.name for p in empty_table_cache.iterdir()) == [table_cache_path(ALPHA).name]


def test_open_file_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        assert raise_open_file_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
