"""Deployment: the Dockerfile, .dockerignore and docker-compose.yml checked statically (deploy/check-image.sh
builds and runs them where Docker can start), the config files they reference parsed and validated, the
settings precedence of ``rtnstream serve --config``, the refusal of a non-loopback address without a token,
and camera presets over the real HTTP API."""

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from rtnstream.cli import build_parser
from rtnstream.clients.stream import FrameSender
from rtnstream.commands.serve import settings_from_args
from rtnstream.service.jobs import load_preset
from rtnstream.service.server import BackgroundServer, free_port
from rtnstream.service.settings import ServiceSettings
from tests.service._support import CAMERAS, SHAPE, loopback, make_sim, service_settings, wait_healthy, write_preset

ROOT = Path(__file__).resolve().parents[1]
CONFIG_IN_IMAGE = "/etc/rtnstream"
SERVICE_TOML = f"{CONFIG_IN_IMAGE}/service.toml"
COMPOSE_V1 = Path("/usr/bin/docker-compose")  # Debian 12's docker-compose 1.29


# ------------------------------------------------------------------------------------------- Dockerfile
def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> dict[str, dict]:
    """Stages of a Dockerfile: name -> {"base": image, "instructions": [(KEYWORD, argument text)]}; the
    global ARG defaults are under the key ``None``."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args, stages, current = {}, {None: {}}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = stages[None][name] = default
        elif keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.strip())
            current = stages[name.strip() or "-"] = {"base": base, "instructions": []}
        else:
            current["instructions"].append((keyword, rest))
    return stages


def stage_chain(stages: dict, name: str) -> list[dict]:
    """A stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1]["base"] in stages:
        chain.append(stages[chain[-1]["base"]])
    return chain


def instructions(stages: dict, name: str, keyword: str) -> list[str]:
    return [rest for stage in reversed(stage_chain(stages, name)) for k, rest in stage["instructions"]
            if k == keyword]


@pytest.fixture(scope="module")
def stages():
    return dockerfile_stages()


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def service_toml():
    # the container's settings serve on 0.0.0.0: valid only with a token (or allow_insecure_bind)
    return ServiceSettings(config_file=ROOT / "config" / "service.toml", allow_insecure_bind=True)


@pytest.mark.parametrize("target, extras", [("cpu", "service"), ("gpu", "service,gpu")])
def test_dockerfile_targets(stages, service_toml, target, extras):
    chain = stage_chain(stages, target)
    assert chain[-1]["base"] == stages[None]["BASE_IMAGE"] == "debian:bookworm-slim"  # a build argument
    external = {st["base"] for name, st in stages.items() if name is not None and st["base"] not in stages}
    assert external == {"debian:bookworm-slim"}  # the one base image, for both targets: no CUDA image
    copies = instructions(stages, target, "COPY")
    build_stage = next(c.split()[0].removeprefix("--from=") for c in copies if c.startswith("--from="))
    assert build_stage in stages and build_stage != target  # multi-stage: the venv is built elsewhere
    assert any("/opt/venv" in c for c in copies if c.startswith("--from="))
    assert not any(s["base"] == build_stage for s in chain)  # no compiler or sources in the runtime image
    install = " ".join(instructions(stages, build_stage, "RUN"))
    assert re.findall(r'pip install \$\{PIP_OPTIONS\} "([^"]+)"', install) == [f"/src[{extras}]"]
    assert "COPY . /src" in [f"COPY {c}" for c in instructions(stages, build_stage, "COPY")]
    user = instructions(stages, target, "USER")
    assert user and user[-1] not in ("root", "0")  # runs as a non-root user
    assert f"config/ {CONFIG_IN_IMAGE}/" in copies
    port = service_toml.port
    assert instructions(stages, target, "EXPOSE")[-1] == str(port)
    health = instructions(stages, target, "HEALTHCHECK")[-1]
    assert f"http://127.0.0.1:{port}/healthz" in health and "CMD" in health
    entry = yaml.safe_load(instructions(stages, target, "ENTRYPOINT")[-1])  # a JSON array
    assert entry == ["rtnstream", "serve", "--config", SERVICE_TOML]
    volumes = yaml.safe_load(instructions(stages, target, "VOLUME")[-1])
    assert volumes == [str(service_toml.data_dir)]


def test_the_redis_image_is_debians_redis_on_the_same_base():
    stages = dockerfile_stages(ROOT / "deploy" / "redis.Dockerfile")
    assert stages[None]["BASE_IMAGE"] == dockerfile_stages()[None]["BASE_IMAGE"]
    (stage,) = [v for k, v in stages.items() if k is not None]
    run = " ".join(rest for k, rest in stage["instructions"] if k == "RUN")
    assert "apt-get install" in run and "redis-server" in run
    assert [rest for k, rest in stage["instructions"] if k == "USER"] == ["redis"]


def dockerignore_keeps(path: str, patterns: list[str]) -> bool:
    """Whether the build context holds ``path`` under these .dockerignore patterns (the last match wins;
    a pattern that matches a folder matches what is inside it)."""
    parts = path.split("/")
    keep = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            candidates += ["/".join(parts[k:j]) for k in range(len(parts)) for j in range(k + 1, len(parts) + 1)]
            pattern = pattern.removeprefix("**/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            keep = negate
    return keep


def test_dockerignore_sends_the_package_sources_and_little_else():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    folders = ("rtnstream/", "kernels/", "service/", "clients/", "calibration/", "config/")
    needed = [p for p in tracked if p.startswith(folders)] + ["pyproject.toml", "setup.py", "README.md"]
    assert not [p for p in needed if not dockerignore_keeps(p, patterns)], "excluded from the build context"
    assert dockerignore_keeps("wheelhouse/numpy-2.0-cp311-cp311-manylinux_2_17_x86_64.whl", patterns)
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "docs/deploy.md", "bench/engine.py",
                  "kernels/__pycache__/cube.cpython-311.pyc", "build/lib/x.py", "dist/rtnstream.whl"):
        assert not dockerignore_keeps(heavy, patterns), f"{heavy} would be sent to the build"


# ------------------------------------------------------------------------------------------- compose
def test_compose_services_profiles_and_health(compose, service_toml):
    services = compose["services"]
    assert set(services) == {"redis", "rtnstream", "rtnstream-gpu", "camera", "sink", "prometheus", "grafana"}
    assert "name" not in compose and "version" not in compose  # compose 1.29 reads neither as v2 does
    for name, svc in services.items():
        assert svc["network_mode"] == "host" and "ports" not in svc, name  # the host's network, no mapping
    redis = services["redis"]
    assert redis["build"]["dockerfile"] == "redis.Dockerfile" and redis["build"]["context"] == "deploy"
    assert "profiles" not in redis and redis["command"][:2] == ["--bind", "127.0.0.1"]
    assert "${RTNSTREAM_REDIS_PORT:-6379}" in redis["command"] and "--appendonly" in redis["command"]
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    assert any(v.endswith(":/data") and v.split(":")[0] in compose["volumes"] for v in redis["volumes"])

    cpu, gpu = services["rtnstream"], services["rtnstream-gpu"]
    assert "profiles" not in cpu and cpu["build"]["target"] == "cpu"  # the default
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in cpu
    for svc in (cpu, gpu):
        assert svc["build"]["args"]["BASE_IMAGE"] == "${RTNSTREAM_BASE_IMAGE:-debian:bookworm-slim}"
        env = svc["environment"]
        assert env["REDIS_URL"] == "redis://127.0.0.1:${RTNSTREAM_REDIS_PORT:-6379}/0"
        assert env["RTNSTREAM_HOST"] == "${RTNSTREAM_HOST:-127.0.0.1}"  # loopback unless asked
        assert env["RTNSTREAM_ALLOW_INSECURE_BIND"] == "${RTNSTREAM_ALLOW_INSECURE_BIND:-false}"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert f"./config:{CONFIG_IN_IMAGE}:ro" in svc["volumes"]
        data = [v for v in svc["volumes"] if v.endswith(f":{service_toml.data_dir}")]
        assert len(data) == 1 and data[0].split(":")[0] in compose["volumes"]  # a named, persistent volume
        health = " ".join(svc["healthcheck"]["test"])
        assert f"http://127.0.0.1:{env['RTNSTREAM_PORT']}/healthz" in health.replace(" ", "").replace("'", "")
    assert cpu["environment"]["RTNSTREAM_PORT"] != gpu["environment"]["RTNSTREAM_PORT"]  # both on one host

    ingest = {}
    for name in ("camera", "sink"):
        svc = services[name]
        assert svc["profiles"] == ["sim"] and svc["image"] == cpu["image"]
        assert svc["healthcheck"] == {"disable": True}  # clients: no HTTP server to check
        assert svc["depends_on"]["rtnstream"]["condition"] == "service_healthy"
        assert svc["entrypoint"] == ["rtnstream", name]
        endpoint = svc["command"][svc["command"].index("--ingest" if name == "camera" else "--endpoint") + 1]
        ingest[name] = re.fullmatch(r"tcp://127\.0\.0\.1:\$\{(\w+):-(\d+)\}", endpoint).groups()
        argv = [a.replace("${RTNSTREAM_SIM_FRAMES:-600}", "600") for a in svc["command"]]
        args = build_parser(name).parse_args([name, *argv])
        assert args.command == name  # the command line parses
    assert ingest["camera"] != ingest["sink"]


@pytest.mark.skipif(not COMPOSE_V1.exists(), reason="Debian's docker-compose 1.29 is not installed")
def test_compose_v1_reads_the_file():
    proc = subprocess.run([str(COMPOSE_V1), "-f", str(ROOT / "docker-compose.yml"), "--profile", "sim",
                           "--profile", "gpu", "--profile", "monitoring", "config", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_config_file_compose_and_the_image_reference_exists_and_validates(compose, service_toml):
    mounts = [v.split(":") for s in compose["services"].values() for v in s.get("volumes", [])]
    for source, *_ in mounts:
        assert source in compose["volumes"] or (ROOT / source).exists(), source
    # the entrypoint's config file is config/service.toml, in the image and mounted by compose
    assert (ROOT / "config" / SERVICE_TOML.removeprefix(f"{CONFIG_IN_IMAGE}/")).is_file()
    assert service_toml.host == "0.0.0.0" and service_toml.redis_url is None and service_toml.token is None
    assert service_toml.presets_dir == ROOT / "config" / "cameras"  # relative to the file
    presets = sorted(service_toml.presets_dir.glob("*.toml"))
    assert {p.stem for p in presets} >= {"qhy600m-high-gain", "zwo-asi6200mm-gain100"}
    for path in presets:
        preset = load_preset(service_toml.presets_dir, path.stem)
        assert preset.shape == (6388, 9576) and preset.dtype == "<u2"
    default = ServiceSettings().presets_dir  # the presets rtnstream is installed with: those of config/cameras
    assert {p.name: p.read_bytes() for p in default.glob("*.toml")} == \
        {p.name: p.read_bytes() for p in CAMERAS.glob("*.toml")}


def test_camera_presets_hold_the_documented_values():
    qhy = load_preset(CAMERAS, "qhy600m-high-gain")
    assert qhy.gain_e_per_adu == pytest.approx(1 / 3.26, rel=1e-3)  # 3.26 ADU/e- (the RTN paper)
    assert qhy.gain_setting == 60 and "High Gain" in qhy.readout_mode
    zwo = load_preset(CAMERAS, "zwo-asi6200mm-gain100")
    assert 0.252 <= zwo.gain_e_per_adu <= 0.255 and zwo.gain_setting == 100 and zwo.offset_setting == 50
    for preset in (qhy, zwo):
        job = preset.job
        assert (job.reference, job.window, job.alpha, job.overload) == ("temporal", 10, 0.003, "block")


# ------------------------------------------------------------------------------------------- settings
def _serve_args(*argv: str):
    return build_parser("serve").parse_args(["serve", *argv])


def test_precedence_options_over_environment_over_file_over_defaults(tmp_path, monkeypatch):
    for name in ("RTNSTREAM_PORT", "RTNSTREAM_QUEUE_FRAMES", "RTNSTREAM_BACKEND", "RTNSTREAM_CONFIG_FILE",
                 "REDIS_URL", "RTNSTREAM_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    toml = tmp_path / "etc" / "service.toml"
    toml.parent.mkdir()
    toml.write_text('port = 9001\nqueue_frames = 3\nbackend = "numpy"\ndata_dir = "state"\n'
                    'stats_window_s = 4.0\nredis_url = "redis://file:6379/0"\n')
    s = settings_from_args(_serve_args("--config", str(toml)))
    assert (s.port, s.queue_frames, s.backend, s.stats_window_s) == (9001, 3, "numpy", 4.0)  # file over defaults
    assert s.data_dir == toml.parent / "state"  # relative to the file
    assert s.redis_url == "redis://file:6379/0" and s.host == "127.0.0.1"  # default kept
    monkeypatch.setenv("RTNSTREAM_PORT", "9002")
    monkeypatch.setenv("RTNSTREAM_QUEUE_FRAMES", "5")
    monkeypatch.setenv("REDIS_URL", "redis://env:6379/0")
    s = settings_from_args(_serve_args("--config", str(toml)))
    assert (s.port, s.queue_frames, s.redis_url) == (9002, 5, "redis://env:6379/0")  # environment over file
    assert s.backend == "numpy"
    s = settings_from_args(_serve_args("--config", str(toml), "--port", "9003", "--backend", "auto",
                                       "--redis-url", "redis://arg:6379/0"))
    assert (s.port, s.backend, s.redis_url, s.queue_frames) == (9003, "auto", "redis://arg:6379/0", 5)
    monkeypatch.setenv("RTNSTREAM_CONFIG_FILE", str(toml))  # the file can come from the environment too
    assert settings_from_args(_serve_args()).stats_window_s == 4.0


@pytest.mark.parametrize("content, words", [
    ("prot = 8080\n", "unknown setting(s) prot"),
    ("port = \n", "not valid TOML"),
    ('port = "http"\n', "port: Input should be a valid integer"),
    ("queue_frames = 0\n", "queue_frames: Input should be greater than or equal to 1"),
    ('redis_url = "redis://x"\nredis_db_file = "r.db"\n', "redis_url (external Redis) or redis_db_file"),
])
def test_a_bad_config_file_is_refused_naming_the_problem(tmp_path, monkeypatch, content, words):
    monkeypatch.delenv("REDIS_URL", raising=False)
    toml = tmp_path / "service.toml"
    toml.write_text(content)
    with pytest.raises(SystemExit) as err:
        settings_from_args(_serve_args("--config", str(toml)))
    assert words in str(err.value) and str(err.value).startswith("rtnstream serve: error: ")
    with pytest.raises(SystemExit, match="config_file: cannot read .*missing.toml"):
        settings_from_args(_serve_args("--config", str(tmp_path / "missing.toml")))


# ------------------------------------------------------------------------------------------- presets
@pytest.fixture(scope="module")
def preset_server(tmp_path_factory):
    presets = tmp_path_factory.mktemp("presets")
    write_preset(presets, "testcam", SHAPE, reference="spatial", window=8, alpha=0.001, spatial_size=3,
                 overload="drop", queue_frames=5)
    shutil.copy(CAMERAS / "qhy600m-high-gain.toml", presets)
    (presets / "broken.toml").write_text('name = "broken"\nshape = [1, 2]\n')
    with BackgroundServer(service_settings(tmp_path_factory.mktemp("svc"), presets_dir=presets)) as server:
        yield server


@pytest.fixture(scope="module")
def preset_cube(preset_server, tmp_path_factory):
    with open(make_sim(tmp_path_factory.mktemp("sim")).cube_path, "rb") as f:
        return httpx.post(f"{preset_server.url}/v1/cubes", files={"file": ("c.fits", f)}).json()["id"]


def _create(server, cube_id, **fields):
    body = {"camera": "cam", "cube_id": cube_id, "ingest": loopback(), "publish": loopback(), **fields}
    return httpx.post(f"{server.url}/v1/jobs", json=body)


def test_a_preset_fills_the_job_defaults_and_explicit_fields_win(preset_server, preset_cube):
    r = _create(preset_server, preset_cube, preset="testcam", window=6, overload="block")
    assert r.status_code == 201, r.text
    job = httpx.get(f"{preset_server.url}/v1/jobs/{r.json()['id']}").json()
    c = job["config"]
    assert (c["window"], c["overload"]) == (6, "block")  # given in the request
    assert (c["reference"], c["alpha"], c["spatial_size"], c["queue_frames"], c["preset"]) == \
        ("spatial", 0.001, 3, 5, "testcam")  # from the preset
    assert c["k_var"] == 1.5  # in neither: the built-in default
    plain = httpx.get(f"{preset_server.url}/v1/jobs/{_create(preset_server, preset_cube).json()['id']}").json()
    assert (plain["config"]["reference"], plain["config"]["preset"]) == ("temporal", None)
    for j in (job, plain):
        httpx.post(f"{preset_server.url}/v1/jobs/{j['id']}/stop")


@pytest.mark.parametrize("preset, status, code, words", [
    ("nocam", 404, "not_found", "no camera preset 'nocam'"),
    ("qhy600m-high-gain", 422, "preset_mismatch", "[6388, 9576]"),
    ("broken", 500, "invalid_preset", "description"),
    ("../etc/passwd", 422, "invalid_request", "preset"),
])
def test_a_preset_that_does_not_apply_is_refused_naming_the_field(preset_server, preset_cube, preset, status,
                                                                   code, words):
    before = httpx.get(f"{preset_server.url}/v1/jobs").json()["jobs"]
    r = _create(preset_server, preset_cube, preset=preset)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == (code, "preset") and words in err["message"]
    assert httpx.get(f"{preset_server.url}/v1/jobs").json()["jobs"] == before  # no job was made



# ------------------------------------------------------------------------------------------- safe defaults
@pytest.fixture
def no_service_env(monkeypatch, tmp_path):
    for name in [k for k in os.environ if k.startswith("RTNSTREAM_")] + ["REDIS_URL"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_address_needs_no_token(no_service_env, host):
    assert ServiceSettings(host=host).token is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "node7.example.org"])
def test_a_non_loopback_address_needs_a_token_or_the_explicit_setting(no_service_env, monkeypatch, host):
    with pytest.raises(ValidationError, match=r"is not a loopback address: set a token \(RTNSTREAM_TOKEN\)"):
        ServiceSettings(host=host)
    with pytest.raises(ValidationError, match="RTNSTREAM_ALLOW_INSECURE_BIND"):
        ServiceSettings(host=host, token="")  # an empty token is no token
    assert ServiceSettings(host=host, token="s3cret").token.get_secret_value() == "s3cret"
    assert ServiceSettings(host=host, allow_insecure_bind=True).allow_insecure_bind
    monkeypatch.setenv("RTNSTREAM_HOST", host)
    monkeypatch.setenv("RTNSTREAM_ALLOW_INSECURE_BIND", "1")
    assert ServiceSettings().host == host


def test_the_container_settings_alone_are_refused(no_service_env, monkeypatch):
    toml = ROOT / "config" / "service.toml"
    with pytest.raises(SystemExit, match=r"^rtnstream serve: error: host '0\.0\.0\.0' is not a loopback"):
        settings_from_args(_serve_args("--config", str(toml)))
    monkeypatch.setenv("RTNSTREAM_TOKEN", "s3cret")
    assert settings_from_args(_serve_args("--config", str(toml))).host == "0.0.0.0"


def _serve(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RTNSTREAM_") and k != "REDIS_URL"}
    return subprocess.Popen([str(Path(sys.executable).parent / "rtnstream"), "serve", "--data-dir",
                             str(tmp_path / "state"), *argv], cwd=tmp_path, env={**clean, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_serve_refuses_every_interface_without_a_token(tmp_path):
    proc = _serve(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert out.strip() == ("rtnstream serve: error: host '0.0.0.0' is not a loopback address: set a token "
                           "(RTNSTREAM_TOKEN) so that only its holders can change jobs, or allow_insecure_bind = "
                           "true (RTNSTREAM_ALLOW_INSECURE_BIND=1) to serve it without one")


@pytest.mark.parametrize("host, argv, env, logged", [
    ("127.0.0.1", [], {}, "(loopback only, no token)"),
    ("127.0.0.1", ["--token", "s3cret"], {}, ": a bearer token is required on every mutating call"),
    ("0.0.0.0", [], {"RTNSTREAM_ALLOW_INSECURE_BIND": "1"},
     "WARNING rtnstream.commands.serve: HTTP on http://0.0.0.0:{port} WITHOUT a token (allow_insecure_bind)"),
])
def test_serve_logs_how_http_is_guarded(tmp_path, host, argv, env, logged):
    port = free_port()
    proc = _serve(tmp_path, "--host", host, "--port", str(port), *argv, env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)  # only ever talked to on 127.0.0.1
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert logged.format(port=port) in out
    assert "Traceback" not in out


# ------------------------------------------------------------------------------------------- monitoring
GRAFANA = ROOT / "deploy" / "grafana"


def test_the_monitoring_profile_runs_prometheus_and_grafana_provisioned(compose):
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for svc, variable in ((prometheus, "RTNSTREAM_PROMETHEUS_IMAGE"), (grafana, "RTNSTREAM_GRAFANA_IMAGE")):
        assert svc["profiles"] == ["monitoring"] and svc["network_mode"] == "host"
        assert re.fullmatch(rf"\$\{{{variable}:-[\w./-]+:[\w.-]+\}}", svc["image"]), svc["image"]  # a variable
        assert "build" not in svc
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "--web.listen-address=127.0.0.1:${RTNSTREAM_PROMETHEUS_PORT:-9090}" in prometheus["command"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    env = grafana["environment"]
    assert env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"  # loopback, like everything else in the file
    assert env["RTNSTREAM_PROMETHEUS_PORT"] == "${RTNSTREAM_PROMETHEUS_PORT:-9090}"

    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = scrape
    port = ServiceSettings.model_fields["port"].default  # compose runs the service on its default port
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"]
    assert services["rtnstream"]["environment"]["RTNSTREAM_PORT"] == f"${{RTNSTREAM_HTTP_PORT:-{port}}}"

    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://127.0.0.1:${RTNSTREAM_PROMETHEUS_PORT}"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "rtnstream.yml").read_text())[
        "providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((GRAFANA / "dashboards" / "rtnstream.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}  # every panel reads the provisioned data source


def _exported_metric_names(url: str) -> set[str]:
    """Every sample name in the service's /metrics (``_total``, ``_bucket``, ``_sum``, ``_count`` included)."""
    text = httpx.get(f"{url}/metrics").text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_grafana_query_names_a_metric_a_running_service_exports(tmp_path):
    dashboard = json.loads((GRAFANA / "dashboards" / "rtnstream.json").read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency", "rejections", "corrections", "queue depth", "redis"):
        assert topic in titles, topic
    panels = dashboard["panels"]
    assert dashboard["uid"] == "rtnstream" and len({p["id"] for p in panels}) == len(panels)
    for p in panels:  # what Grafana needs to place and draw each panel
        assert p["type"] in ("timeseries", "stat") and set(p["gridPos"]) == {"x", "y", "w", "h"}, p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels}
    assert all(exprs.values())
    assert any("histogram_quantile(0.99" in e and "rtnstream_latency_seconds_bucket" in e
               for e in exprs["Latency quantiles, arrival to publish (histogram)"])
    queried = {name for es in exprs.values() for e in es for name in re.findall(r"\brtnstream_\w+", e)}
    queried |= set(re.findall(r"\brtnstream_\w+", json.dumps(dashboard["templating"])))
    sim = make_sim(tmp_path)
    with BackgroundServer(service_settings(tmp_path / "service")) as server:
        with httpx.Client(base_url=server.url) as client:
            cube = client.post("/v1/cubes", files={"file": sim.cube_path.open("rb")}).json()["id"]
            ingest = loopback()
            job = client.post("/v1/jobs", json={"camera": "cam", "cube_id": cube, "ingest": ingest,
                                                "publish": loopback()}).json()["id"]
            with FrameSender(ingest, "cam") as tx, FrameSender(ingest, "other-cam") as stranger:
                stranger.start_series("x")  # rejected (camera): every family has samples, rejections too
                tx.start_series("s")
                for f in sim.frames:
                    tx.send_frame(f)
                tx.end_series()
                deadline = time.monotonic() + 60
                while (c := client.get(f"/v1/jobs/{job}").json()["counters"])["frames_out"] < len(sim.frames) \
                        or not c["rejected"]:
                    assert time.monotonic() < deadline, "frames not delivered"
                    time.sleep(0.05)
            exported = _exported_metric_names(server.url)
    assert queried and queried <= exported, sorted(queried - exported)
