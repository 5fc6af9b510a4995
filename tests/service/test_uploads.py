"""Cube uploads against a real server over real sockets: the token is checked before the body is read, the
body is streamed to disk under ``max_upload_bytes`` (413 beyond it), and nothing is left behind (issue 10,
defect 9)."""

import os
import socket
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from rtnstream.clients.control import ControlClient, ServiceError
from rtnstream.service.server import BackgroundServer
from tests.service._support import service_settings

TOKEN = "s3cret"
LIMIT = 300_000  # bytes: the test cube (273 600 bytes) fits in a form, a body of LIMIT + 1 does not
BODY_LIMIT = 4096  # bytes: every other (JSON) body
HUGE = 2 << 30  # what an attacker claims to send


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    settings = service_settings(tmp_path_factory.mktemp("uploads"), token=TOKEN, max_upload_bytes=LIMIT,
                                max_body_bytes=BODY_LIMIT, body_idle_timeout_s=1.0)
    with BackgroundServer(settings) as srv:
        yield srv


def _stored(server) -> list[str]:
    """Every file of the cube store (cubes, summaries, partial uploads)."""
    return sorted(os.listdir(server.settings.cube_dir))


def _raw_exchange(server, head: bytes, body: list[bytes], timeout_s: float = 10.0) -> tuple[int, dict, bytes]:
    """Send a request head and the given body pieces on a plain socket (nothing more, whatever the head claims),
    then read the answer: (status, headers, body). A server that answers early and closes may refuse the
    rest of the pieces (broken pipe): its answer is read all the same. Fails if none comes within ``timeout_s``."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=timeout_s) as s:
        try:
            s.sendall(head)
            for piece in body:
                s.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"connection closed without an answer ({data!r})"
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
        while len(rest) < int(headers.get("content-length", 0)):
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split(" ")[1]), headers, rest


def _head(server, content_type: str, length: int | None = None, token: str | None = None,
          path: str = "/v1/cubes") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {urlsplit(server.url).netloc}", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _form_start(boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cube.fits\"\r\n"
            "Content-Type: application/fits\r\n\r\n").encode()


def test_defect9_unauthenticated_upload_gets_401_after_the_headers_alone(guarded):
    # The client claims 2 GiB and sends only the head and the first bytes of the form: the 401 must come now,
    # not after the body (on main the body was read whole, spooled to /tmp, then refused).
    boundary = uuid.uuid4().hex
    for token in (None, "wrong"):
        status, headers, body = _raw_exchange(
            guarded, _head(guarded, f"multipart/form-data; boundary={boundary}", HUGE, token),
            [_form_start(boundary), b"SIMPLE  =                    T" + b" " * 50])
        assert status == 401 and b'"unauthorized"' in body
        assert headers["www-authenticate"] == "Bearer" and headers["connection"] == "close"
    assert _stored(guarded) == []


def test_defect9_upload_over_the_limit_gets_413_before_its_body(guarded):
    # Content-Length over the limit: refused from the head alone, with the token right.
    status, headers, body = _raw_exchange(guarded, _head(guarded, "application/fits", HUGE, TOKEN), [])
    assert status == 413 and b'"too_large"' in body and b"max_upload_bytes" in body
    assert headers["connection"] == "close"
    boundary = uuid.uuid4().hex
    status, _, _ = _raw_exchange(guarded, _head(guarded, f"multipart/form-data; boundary={boundary}", LIMIT + 1,
                                                TOKEN), [_form_start(boundary)])
    assert status == 413
    assert _stored(guarded) == []


@pytest.mark.parametrize("form", [False, True], ids=["raw", "multipart"])
def test_defect9_chunked_upload_over_the_limit_gets_413_and_leaves_nothing_on_disk(guarded, form):
    # No Content-Length: the server counts as the chunks arrive, answers 413 once past the limit and
    # removes what it had written.
    boundary = uuid.uuid4().hex
    kind = f"multipart/form-data; boundary={boundary}" if form else "application/fits"
    piece = b"\0" * 16384
    chunks = [_form_start(boundary)] if form else []
    chunks += [piece] * (LIMIT // len(piece) + 1)  # the last one passes the limit
    wire = [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks]
    status, headers, body = _raw_exchange(guarded, _head(guarded, kind, None, TOKEN), wire)
    assert status == 413 and b'"too_large"' in body and headers["connection"] == "close"
    assert _stored(guarded) == []


def test_defect9_upload_that_stops_sending_gets_408_and_leaves_nothing_on_disk(guarded):
    # A client that claims 100 KB, sends a few bytes and then nothing holds a connection and a partial file
    # for ever on main; here the server answers 408 once body_idle_timeout_s passes without a byte.
    boundary = uuid.uuid4().hex
    status, headers, body = _raw_exchange(
        guarded, _head(guarded, f"multipart/form-data; boundary={boundary}", 100_000, TOKEN),
        [_form_start(boundary) + b"SIMPLE  ="])
    assert status == 408 and b'"body_timeout"' in body and b"body_idle_timeout_s" in body
    assert headers["connection"] == "close"
    assert _stored(guarded) == []


def test_uploads_within_the_limit_as_a_form_a_raw_body_or_chunked(guarded, sim):
    with ControlClient(guarded.url, token=TOKEN) as api:
        assert api.upload_cube(sim.cube_path)["id"] == sim.cube.cube_id  # multipart, as the client sends it
    auth = {"Authorization": f"Bearer {TOKEN}"}
    data = sim.cube_path.read_bytes()
    r = httpx.post(f"{guarded.url}/v1/cubes", content=data, headers={**auth, "Content-Type": "application/fits"})
    assert r.status_code == 201 and r.json()["id"] == sim.cube.cube_id

    def pieces():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    r = httpx.post(f"{guarded.url}/v1/cubes", content=pieces(), headers={**auth, "Content-Type": "image/fits"})
    assert r.status_code == 201 and r.json()["id"] == sim.cube.cube_id
    assert _stored(guarded) == [f"{sim.cube.cube_id}.fits", f"{sim.cube.cube_id}.json"]  # no partial left


def test_the_client_gets_413_for_a_cube_over_the_limit(guarded, tmp_path):
    big = tmp_path / "big.fits"
    big.write_bytes(b"\0" * (LIMIT + 1))
    with ControlClient(guarded.url, token=TOKEN) as api, pytest.raises(ServiceError) as err:
        api.upload_cube(big)
    assert (err.value.status, err.value.code, err.value.field) == (413, "too_large", "file")


def test_upload_errors_name_the_clients_file_not_server_paths(guarded, tmp_path):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{guarded.url}/v1/cubes", headers=auth,
                   files={"file": ("../../etc/my cube.fits", b"SIMPLE  = nonsense", "application/fits")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cube"
    message = r.json()["error"]["message"]
    assert message.startswith("my_cube.fits: ")
    assert str(guarded.settings.data_dir) not in message and ".part" not in message
    r = httpx.post(f"{guarded.url}/v1/cubes", headers={**auth, "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 415 and r.json()["error"]["field"] == "file"
    r = httpx.post(f"{guarded.url}/v1/cubes", headers=auth, files={"other": ("x.fits", b"", "application/fits")})
    assert r.status_code == 422 and r.json()["error"]["field"] == "file"
    assert not [f for f in _stored(guarded) if f.endswith(".part")]


def test_openapi_documents_both_upload_forms(guarded):
    body = httpx.get(f"{guarded.url}/openapi.json").json()["paths"]["/v1/cubes"]["post"]
    content = body["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert "application/fits" in content
    assert {"401", "413", "415"} <= set(body["responses"])


# ---- every other body (BodyGuard) ----------------------------------------------------------------


def test_defect9_unauthenticated_job_request_gets_401_after_the_headers_alone(guarded):
    # FastAPI reads a JSON body (into memory) before it checks the token: the guard in front of the app
    # refuses from the head alone, whatever the body claims to be.
    status, headers, body = _raw_exchange(guarded, _head(guarded, "application/json", HUGE, path="/v1/jobs"),
                                          [b'{"camera": "c", '])
    assert status == 401 and b'"unauthorized"' in body and headers["connection"] == "close"


def test_json_body_over_max_body_bytes_gets_413(guarded):
    status, _, body = _raw_exchange(guarded, _head(guarded, "application/json", HUGE, TOKEN, "/v1/jobs"), [])
    assert status == 413 and b"max_body_bytes" in body
    piece = b" " * 1024
    wire = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n"] * (BODY_LIMIT // len(piece) + 1)
    status, headers, body = _raw_exchange(guarded, _head(guarded, "application/json", None, TOKEN, "/v1/jobs"),
                                          wire)
    assert status == 413 and b"max_body_bytes" in body and headers["connection"] == "close"


def test_chunked_json_within_the_limit_reaches_the_route(guarded):
    body = b'{"camera": "c", "cube_id": "0123456789abcdef", "ingest": "tcp://127.0.0.1:1", "publish": ' \
           b'"tcp://127.0.0.1:2"}'

    def pieces():
        yield body[:10]
        yield body[10:]

    r = httpx.post(f"{guarded.url}/v1/jobs", content=pieces(),
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "cube_id"  # parsed: no such cube


def test_json_body_that_stops_sending_gets_408(guarded):
    status, _, body = _raw_exchange(guarded, _head(guarded, "application/json", 1000, TOKEN, "/v1/jobs"),
                                    [b'{"camera": '])
    assert status == 408 and b'"body_timeout"' in body
