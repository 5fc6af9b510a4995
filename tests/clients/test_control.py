"""The HTTP control client: errors carry the service's envelope; waiting fails loudly."""

import pytest

from rtnstream.clients.control import ControlClient, ServiceError
from rtnstream.service.server import free_port
from tests.clients._job import start_job


def test_errors_carry_status_code_and_field(api, sim):
    cube_id = api.upload_cube(sim.cube_path)["id"]
    with pytest.raises(ServiceError) as err:
        api.create_job("cam", cube_id, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", window=5)
    assert (err.value.status, err.value.code, err.value.field) == (422, "invalid_request", "window")
    assert "window" in str(err.value)


def test_unreachable_service_is_a_clear_error():
    with ControlClient(f"http://127.0.0.1:{free_port()}", timeout_s=2) as api, pytest.raises(ServiceError) as err:
        api.list_jobs()
    assert err.value.status is None and err.value.code == "unreachable" and "cannot reach" in str(err.value)


def test_wait_until_times_out_with_the_last_counters(api, sim):
    status = start_job(api, sim.cube_path, push=False)
    with pytest.raises(TimeoutError, match="frames_in"):
        api.wait_until(status["id"], lambda s: s["counters"]["frames_in"] > 0, timeout_s=0.3)
    assert api.wait_until(status["id"], lambda s: s["state"] == "running")["id"] == status["id"]
    api.stop_job(status["id"])
