"""Deployment: Dockerfile and docker-compose.yml checked statically (no Docker engine here), the config files
they reference parsed and validated, the settings precedence of ``rtnstream serve --config``, and camera
presets over the real HTTP API."""

import fnmatch
import re
import shutil
from pathlib import Path

import httpx
import pytest
import yaml

from rtnstream.cli import build_parser
from rtnstream.commands.serve import settings_from_args
from rtnstream.service.jobs import load_preset
from rtnstream.service.server import BackgroundServer
from rtnstream.service.settings import ServiceSettings
from tests.service._support import CAMERAS, SHAPE, loopback, make_sim, service_settings, write_preset

ROOT = Path(__file__).resolve().parents[1]
CONFIG_IN_IMAGE = "/etc/rtnstream"
SERVICE_TOML = f"{CONFIG_IN_IMAGE}/service.toml"


# ------------------------------------------------------------------------------------------- Dockerfile
def dockerfile_stages() -> dict[str, dict]:
    """Stages of the Dockerfile: name -> {"base": image, "instructions": [(KEYWORD, argument text)]}."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    args, stages, current = {}, {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.strip())
            current = stages[name.strip()] = {"base": base, "instructions": []}
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
    return ServiceSettings(config_file=ROOT / "config" / "service.toml")


@pytest.mark.parametrize("target, base", [("cpu", r"python:3\.11-slim"), ("gpu", r"nvidia/cuda:12\.[\d.]+-runtime-")])
def test_dockerfile_targets(stages, service_toml, target, base):
    chain = stage_chain(stages, target)
    assert re.match(base, chain[-1]["base"]), chain[-1]["base"]
    copies = instructions(stages, target, "COPY")
    build_stage = next(c.split()[0].removeprefix("--from=") for c in copies if c.startswith("--from="))
    assert build_stage in stages and build_stage != target  # multi-stage: the venv is built elsewhere
    assert any("/opt/venv" in c for c in copies if c.startswith("--from="))
    install = " ".join(instructions(stages, build_stage, "RUN"))
    assert re.findall(r'pip install "?(\.[^"\s]*)"?', install) == [".[gpu]" if target == "gpu" else "."]
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


def test_dockerignore_keeps_what_the_build_copies(stages):
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    sources = {c.split()[0].rstrip("/") for stage in stages.values() for k, c in stage["instructions"]
               if k == "COPY" and not c.startswith("--from=")}
    sources |= {src for stage in stages.values() for k, c in stage["instructions"] if k == "COPY"
                and not c.startswith("--from=") for src in c.split()[:-1]}
    sources = {s.rstrip("/") for s in sources}
    assert {"pyproject.toml", "README.md", "rtnstream", "kernels", "service", "clients", "calibration",
            "config"} <= sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not any(fnmatch.fnmatch(src, p) for p in patterns), f"{src} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "tests"):
        assert any(fnmatch.fnmatch(heavy, p) for p in patterns), f"{heavy} would be sent to the build"


# ------------------------------------------------------------------------------------------- compose
def published(ports: list[str]) -> dict[int, str]:
    """Container port -> host side of each ``host:container`` mapping (ranges expanded)."""
    out = {}
    for entry in ports:
        host, _, container = str(entry).rpartition(":")
        if "-" in container:
            lo, hi = map(int, container.split("-"))
            hosts = host.split("-")
            for k, port in enumerate(range(lo, hi + 1)):
                out[port] = str(int(hosts[0]) + k)
        else:
            out[int(container)] = host
    return out


def test_compose_services_profiles_and_health(compose, service_toml):
    services = compose["services"]
    assert set(services) == {"redis", "rtnstream", "rtnstream-gpu", "camera", "sink"}
    redis = services["redis"]
    assert re.match(r"redis:\d", redis["image"]) and "profiles" not in redis
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert any(v.endswith(":/data") and v.split(":")[0] in compose["volumes"] for v in redis["volumes"])
    assert "--appendonly" in redis["command"]  # job state survives a Redis restart

    cpu, gpu = services["rtnstream"], services["rtnstream-gpu"]
    assert "profiles" not in cpu and cpu["build"]["target"] == "cpu"  # the default
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in cpu
    for svc in (cpu, gpu):
        assert svc["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert f"./config:{CONFIG_IN_IMAGE}:ro" in svc["volumes"]
        data = [v for v in svc["volumes"] if v.endswith(f":{service_toml.data_dir}")]
        assert len(data) == 1 and data[0].split(":")[0] in compose["volumes"]  # a named, persistent volume
        assert service_toml.port in published(svc["ports"])  # the HTTP port of config/service.toml
        assert "healthcheck" not in svc  # the image's HEALTHCHECK on /healthz applies
    host_ports = [set(published(s["ports"]).values()) for s in (cpu, gpu)]
    assert not any(p.isdigit() for p in host_ports[0] & host_ports[1])  # both profiles can run on one host

    for name in ("camera", "sink"):
        svc = services[name]
        assert svc["profiles"] == ["sim"] and svc["build"]["target"] == "cpu"
        assert svc["healthcheck"] == {"disable": True}  # clients: no HTTP server to check
        assert svc["depends_on"]["rtnstream"]["condition"] == "service_healthy"
        assert svc["entrypoint"] == ["rtnstream", name]
        endpoint = svc["command"][svc["command"].index("--ingest" if name == "camera" else "--endpoint") + 1]
        host, port = re.match(r"tcp://([\w-]+):(\d+)$", endpoint).groups()
        assert host == "rtnstream" and int(port) in published(cpu["ports"])
        args = build_parser("camera" if name == "camera" else "sink").parse_args([name, *svc["command"]])
        assert args.command == name  # the command line parses


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

