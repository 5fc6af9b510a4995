"""Start a job on the test server and read its output."""

from rtnstream.clients.control import ControlClient
from tests.service._support import loopback


def start_job(api: ControlClient, cube_path, push: bool = True, **options) -> dict:
    """Upload the cube, create a job (with a push output unless ``push`` is False); returns its status.

    A job with a push output waits for its one consumer: tests that read the publish output go without."""
    cube_id = api.upload_cube(cube_path)["id"]
    job = api.create_job("cam", cube_id, loopback(), loopback(), push=loopback() if push else None, **options)
    return api.get_job(job)
