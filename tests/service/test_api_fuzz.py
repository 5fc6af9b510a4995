"""The HTTP API fuzzed against its own OpenAPI schema (schemathesis) over real HTTP: no 5xx, ever.

Schemathesis generates requests for every operation of ``/openapi.json`` as the running server publishes
it: valid bodies and parameters from the schema, and invalid ones (wrong types, missing fields, bad
formats). To reach past the "no such cube / job" answers, a share of the generated cases is pointed at a
cube, a job and a camera preset that exist (the rest of each request stays as generated). The only check
is the one the issue asks for: no response is a server error. (Schemathesis' own pytest plugin does not
run under pytest 9, which it reads a removed attribute of; its Python API, ``as_strategy``, does.)
"""

import hashlib
import shutil
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from rtnstream.service.server import BackgroundServer
from tests.service._support import CAMERAS, SHAPE, loopback, service_settings, write_preset

pytestmark = pytest.mark.timeout(120)

_EXAMPLES = 80  # per operation and mode: about 1300 requests, 15-20 s


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, sim):
    presets = tmp_path_factory.mktemp("presets")
    write_preset(presets, "testcam", SHAPE, window=6, alpha=0.001)
    shutil.copy(CAMERAS / "qhy600m-high-gain.toml", presets)  # a shape that differs from the cube's
    settings_ = service_settings(tmp_path_factory.mktemp("fuzz"), presets_dir=presets, stop_timeout_s=5.0)
    with BackgroundServer(settings_) as server:
        with open(sim.cube_path, "rb") as f:
            cube_id = httpx.post(f"{server.url}/v1/cubes", files={"file": ("c.fits", f)}).json()["id"]
        body = {"camera": "cam", "cube_id": cube_id, "ingest": loopback(), "publish": loopback()}
        job_id = httpx.post(f"{server.url}/v1/jobs", json=body).json()["id"]
        server.known = {"cube_id": cube_id, "job_id": job_id, "preset": ["testcam", "qhy600m-high-gain"],
                        "cube_bytes": sim.cube_path.read_bytes()}
        yield server


def _operations(url):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def _has_inputs(operation):
    return any(len(group) for group in (operation.path_parameters, operation.query, operation.body))


def _aim(case, known):
    """Point about half of the cases at things that exist (chosen by a hash of the case, so reproducible)."""
    digest = hashlib.sha256(repr((case.path_parameters, case.query, case.body)).encode()).digest()
    if digest[0] % 2:
        return
    for name in ("cube_id", "job_id"):
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = known[name]
    if isinstance(case.body, dict):
        if "file" in case.body:  # POST /v1/cubes: a real cube file
            case.body["file"] = known["cube_bytes"]
        if "cube_id" in case.body:
            case.body["cube_id"] = known["cube_id"]
        if "preset" in case.body:
            case.body["preset"] = known["preset"][digest[1] % 2]
        if digest[2] % 2:  # valid engine settings and free loopback endpoints: the job may really start
            for name, valid in (("window", 4 + 2 * (digest[3] % 3)), ("spatial_size", 3), ("alpha", 0.003),
                                ("k_var", 1.5)):
                if name in case.body:
                    case.body[name] = valid
            for name in ("ingest", "publish", "push"):
                if name in case.body:
                    case.body[name] = loopback()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_operation_answers_with_a_server_error(fuzz_server, mode):
    operations = _operations(fuzz_server.url)
    labels = {op.label for op in operations}
    assert {"POST /v1/cubes", "POST /v1/jobs", "POST /v1/jobs/{job_id}/stop",
            "GET /v1/jobs/{job_id}/bias-offset"} <= labels  # the schema really is the service's
    statuses, fuzzed = Counter(), set()
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
            continue  # nothing to make invalid (GET /healthz)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            _aim(case, fuzz_server.known)
            response = case.call()
            statuses[response.status_code // 100] += 1
            assert response.status_code < 500, (f"{case.operation.label} answered {response.status_code} "
                                                f"{response.text[:300]}\n{case.as_curl_command()}")

        try:
            call()
        except Unsatisfiable:  # every value is valid (a free-form string path parameter): nothing to negate
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        fuzzed.add(operation.label)
    assert statuses[2] > 0 and statuses[4] > 0  # both accepted and refused requests were made
    assert "POST /v1/jobs" in fuzzed and "POST /v1/cubes" in fuzzed
