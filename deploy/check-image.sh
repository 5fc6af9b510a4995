#!/usr/bin/env bash
# Build the rtnstream image and the Redis image on this machine and run the compose stack (docs/deploy.md):
#   1. a Debian 12 base image from Debian's packages (debootstrap --variant=minbase | docker import), since no
#      image registry may be reachable; the Dockerfiles take it as BASE_IMAGE
#   2. a wheelhouse of rtnstream's dependencies (pip, from its cache or PyPI) that the image installs from
#   3. docker build of rtnstream:cpu and rtnstream-redis:bookworm; the image refuses to serve HTTP on every
#      interface without a token
#   4. docker-compose up: Redis, the service healthy; a cube uploaded and a job created over HTTP (with the
#      token); the simulated camera and the FITS sink of the `sim` profile streaming through it
#   5. docker-compose down and up: the job and the cube are still there
# Every container uses the host's network and is talked to on 127.0.0.1 only, on ports free at the start.
# Runs its own dockerd (private socket and data root under $RTNSTREAM_CHECK_STATE) unless one answers there.
# Exit 0: passed, or skipped with "check-image: SKIP: <reason>" when Docker cannot run on this machine.
# Exit 1: failed. The whole run is bounded by RTNSTREAM_CHECK_TIMEOUT_S (default 1500 s).
# RTNSTREAM_CHECK_GPU=1 also builds the gpu target (CuPy wheels with the CUDA pieces: ~2 GB of downloads) and
# compiles the CUDA kernel in it with NVRTC (no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STATE=${RTNSTREAM_CHECK_STATE:-/var/lib/rtnstream-check}
RUN_DIR=/run/rtnstream-check
SOCK=$RUN_DIR/docker.sock
LIMIT_S=${RTNSTREAM_CHECK_TIMEOUT_S:-1500}
MIRROR=${RTNSTREAM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=rtnstream-base/debian:bookworm
DOCKER=/usr/bin/docker            # Debian's docker.io client (a docker earlier on PATH may be another program)
COMPOSE_BIN=/usr/bin/docker-compose
PROJECT=rtnstream-check
FRAMES=60
START=$(date +%s)
DEADLINE=$((START + LIMIT_S))
TIMES=()
DOCKERD_PID=

say() { printf 'check-image: [%4d s] %s\n' "$(($(date +%s) - START))" "$*"; }
skip() { echo "check-image: SKIP: $*"; exit 0; }
fail() { echo "check-image: FAIL: $*" >&2; exit 1; }
remaining() {
    local r=$((DEADLINE - $(date +%s)))
    ((r > 0)) || fail "time limit of ${LIMIT_S} s reached (RTNSTREAM_CHECK_TIMEOUT_S)"
    echo "$r"
}
# step NAME COMMAND...: run COMMAND within the time left, record how long it took
# (its output goes to $STATE/logs/, and is shown when it fails)
step() {
    local name=$1 t0 rc=0 log
    shift
    t0=$(date +%s)
    log=$STATE/logs/$(printf '%02d' "${#TIMES[@]}")-$(tr -c 'a-zA-Z0-9\n' '-' <<<"$name" | head -c 60).log
    say "$name"
    timeout "$(remaining)" "$@" >"$log" 2>&1 || rc=$?
    if ((rc != 0)); then
        grep -v '^WARNING: Location' "$log" | tail -n 30 >&2
        fail "$name: exit $rc (log: $log)"
    fi
    TIMES+=("$(printf '%-48s %4d s' "$name" "$(($(date +%s) - t0))")")
}
# wait_for WHAT SECONDS COMMAND...: retry COMMAND every second until it succeeds
wait_for() {
    local what=$1 limit=$2 t0
    shift 2
    t0=$(date +%s)
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) - t0 < limit)) || fail "$what: not within $limit s"
        remaining >/dev/null
        sleep 1
    done
    TIMES+=("$(printf '%-48s %4d s' "$what" "$(($(date +%s) - t0))")")
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json_get() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

# ------------------------------------------------------------------------------------------- can Docker run?
[ "$(id -u)" = 0 ] || skip "needs root to start dockerd (run as root, or under CI)"
for tool in /usr/sbin/dockerd "$DOCKER" "$COMPOSE_BIN" /usr/sbin/debootstrap; do
    [ -x "$tool" ] || skip "$tool is missing: apt-get install docker.io docker-compose debootstrap"
done
command -v curl >/dev/null || skip "curl is missing: apt-get install curl"

rm -rf "$STATE/logs"
mkdir -p "$STATE/logs" "$RUN_DIR"
export DOCKER_HOST=unix://$SOCK
COMPOSE=("$COMPOSE_BIN" -p "$PROJECT" -f "$ROOT/docker-compose.yml")

cleanup() {
    local rc=$?
    if [ -n "$DOCKERD_PID" ] || "$DOCKER" info >/dev/null 2>&1; then
        timeout 180 "${COMPOSE[@]}" --profile sim down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null || true
        timeout 60 tail --pid="$DOCKERD_PID" -f /dev/null || kill -9 "$DOCKERD_PID" 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT

if ! "$DOCKER" info >/dev/null 2>&1; then
    say "starting dockerd (socket $SOCK, data $STATE/docker, log $STATE/dockerd.log)"
    /usr/sbin/dockerd --data-root "$STATE/docker" --exec-root "$RUN_DIR/exec" --pidfile "$RUN_DIR/dockerd.pid" \
        -H "unix://$SOCK" --iptables=false --ip6tables=false --bridge=none >"$STATE/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    t0=$(date +%s)
    until "$DOCKER" info >/dev/null 2>&1; do
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null || (($(date +%s) - t0 > 60)); then
            reason=$(grep -m1 -iE 'level=(fatal|error)' "$STATE/dockerd.log" || tail -n1 "$STATE/dockerd.log")
            DOCKERD_PID=
            skip "dockerd cannot start on this machine: ${reason:-no log}"
        fi
        sleep 1
    done
    TIMES+=("$(printf '%-48s %4d s' "dockerd started" "$(($(date +%s) - t0))")")
fi
"$DOCKER" run --help >/dev/null

# ------------------------------------------------------------------------------------------- base image
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    rm -rf "$STATE/bookworm-root"
    step "debootstrap --variant=minbase bookworm" \
        /usr/sbin/debootstrap --variant=minbase bookworm "$STATE/bookworm-root" "$MIRROR"
    step "docker import $BASE_IMAGE" \
        sh -c "tar -C '$STATE/bookworm-root' -c . | '$DOCKER' import - '$BASE_IMAGE' >/dev/null"
    rm -rf "$STATE/bookworm-root"
else
    say "base image $BASE_IMAGE is there (docker image rm it to make it anew)"
fi

# ------------------------------------------------------------------------------------------- images
PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY=$ROOT/.venv/bin/python
EXTRAS=service
[ "${RTNSTREAM_CHECK_GPU:-0}" = 1 ] && EXTRAS=service,gpu
rm -rf "$ROOT/wheelhouse"
# the image's Python is Debian 12's 3.11.2, where redis also needs async-timeout (python_full_version < 3.11.3)
step "wheelhouse of rtnstream[$EXTRAS]" "$PY" -m pip wheel -q --disable-pip-version-check -w "$ROOT/wheelhouse" \
    "$ROOT[$EXTRAS]" "setuptools>=77" "async-timeout>=4.0.3"
rm -f "$ROOT"/wheelhouse/rtnstream-*.whl  # the image builds rtnstream from the sources it is given
BUILD=("$DOCKER" build -q --network host --build-arg "BASE_IMAGE=$BASE_IMAGE")
PIP_OPTIONS="PIP_OPTIONS=--no-index --find-links /src/wheelhouse"
export DOCKER_BUILDKIT=0  # the classic builder needs no frontend image from a registry
step "docker build rtnstream:cpu" "${BUILD[@]}" --build-arg "$PIP_OPTIONS" --target cpu -t rtnstream:cpu "$ROOT"
step "docker build rtnstream-redis:bookworm" "${BUILD[@]}" -t rtnstream-redis:bookworm \
    -f "$ROOT/deploy/redis.Dockerfile" "$ROOT/deploy"
if [ "${RTNSTREAM_CHECK_GPU:-0}" = 1 ]; then
    step "docker build rtnstream:gpu" "${BUILD[@]}" --build-arg "$PIP_OPTIONS" --target gpu -t rtnstream:gpu "$ROOT"
    # NVRTC and the CUDA headers come from the wheels: the kernel compiles for sm_90 with no device or driver
    step "rtnstream:gpu compiles rtn_correct.cu (NVRTC)" "$DOCKER" run --rm --network host --entrypoint python \
        rtnstream:gpu -c "from cupy_backends.cuda.libs import nvrtc
from rtnstream.kernels._cuda import NVRTC_OPTIONS, source_text
prog = nvrtc.createProgram(source_text('rtn_correct.cu'), 'rtn_correct.cu', (), ())
nvrtc.compileProgram(prog, [*NVRTC_OPTIONS, '--gpu-architecture=sm_90'])
print('NVRTC', nvrtc.getVersion(), 'CUBIN bytes', len(nvrtc.getCUBIN(prog)))"
    say "rtnstream:gpu: $(tail -n1 "$STATE"/logs/*NVRTC*.log)"
fi
rm -rf "$ROOT/wheelhouse"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^rtnstream' | sed 's/^/check-image:   /'

# ------------------------------------------------------------------------------------------- the image alone
version=$("$DOCKER" run --rm --network host --entrypoint rtnstream rtnstream:cpu --version)
user=$("$DOCKER" run --rm --network host --entrypoint id rtnstream:cpu -un)
say "image: $version, runs as $user"
[ "$user" != root ] || fail "the image runs as root"
# the image's own settings serve on 0.0.0.0: without a token it must refuse, naming the way out
out=$(timeout 120 "$DOCKER" run --rm --network host rtnstream:cpu --port "$(free_port)" 2>&1) && \
    fail "the image served HTTP on every interface without a token: $out"
grep -q "RTNSTREAM_TOKEN" <<<"$out" || fail "refusal does not say what to set: $out"
say "image without a token refuses: $(grep -m1 'error' <<<"$out")"

# ------------------------------------------------------------------------------------------- compose up
export RTNSTREAM_HTTP_PORT RTNSTREAM_REDIS_PORT RTNSTREAM_SIM_INGEST_PORT RTNSTREAM_SIM_OUTPUT_PORT RTNSTREAM_TOKEN
export RTNSTREAM_SIM_FRAMES=$FRAMES
RTNSTREAM_HTTP_PORT=$(free_port)
RTNSTREAM_REDIS_PORT=$(free_port)
RTNSTREAM_SIM_INGEST_PORT=$(free_port)
RTNSTREAM_SIM_OUTPUT_PORT=$(free_port)
PUBLISH_PORT=$(free_port)
RTNSTREAM_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
URL=http://127.0.0.1:$RTNSTREAM_HTTP_PORT
AUTH=(-H "Authorization: Bearer $RTNSTREAM_TOKEN")
"${COMPOSE[@]}" --profile sim down -v --remove-orphans >/dev/null 2>&1 || true

healthy() {
    local id
    id=$("${COMPOSE[@]}" ps -q rtnstream) && [ -n "$id" ] &&
        [ "$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]
}
step "compose up -d redis rtnstream" "${COMPOSE[@]}" up -d --no-build redis rtnstream
wait_for "rtnstream healthy (compose healthcheck)" 180 healthy
curl -fsS "$URL/healthz" >/dev/null || fail "GET /healthz"
say "service healthy on $URL, Redis on 127.0.0.1:$RTNSTREAM_REDIS_PORT"

# the cube of the simulated camera's sensor, written by the image, uploaded over HTTP
WORK=$(mktemp -d "$STATE/work.XXXXXX")
chmod 0777 "$WORK"
step "write the simulated sensor's cube" "${COMPOSE[@]}" run --rm --no-deps -v "$WORK:/out" camera \
    --ingest tcp://127.0.0.1:1 --shape 512 512 --sensor-seed 0 --write-cube /out/cube.fits
code=$(curl -sS -o /dev/null -w '%{http_code}' -F "file=@$WORK/cube.fits" "$URL/v1/cubes")
[ "$code" = 401 ] || fail "POST /v1/cubes without the token answered $code, not 401"
CUBE=$(curl -fsS "${AUTH[@]}" -F "file=@$WORK/cube.fits" "$URL/v1/cubes" | json_get 'd["id"]')
rm -rf "$WORK"
job_body() {
    printf '{"camera": "simcam", "cube_id": "%s", "ingest": "tcp://127.0.0.1:%s", "publish": "tcp://127.0.0.1:%s",
             "push": "tcp://127.0.0.1:%s"%s}' "$CUBE" "$RTNSTREAM_SIM_INGEST_PORT" "$PUBLISH_PORT" \
        "$RTNSTREAM_SIM_OUTPUT_PORT" "$1"
}
preset=$(curl -sS "${AUTH[@]}" -H 'Content-Type: application/json' -d "$(job_body ', "preset": "qhy600m-high-gain"')" \
    "$URL/v1/jobs")
grep -q '"preset_mismatch"' <<<"$preset" || fail "a job naming the qhy600m-high-gain preset: $preset"
say "the camera preset qhy600m-high-gain is read (refused for this 512 x 512 cube: preset_mismatch)"
JOB=$(curl -fsS "${AUTH[@]}" -H 'Content-Type: application/json' -d "$(job_body '')" "$URL/v1/jobs" |
    json_get 'd["id"]')
say "cube $CUBE, job $JOB"

sink_done() {
    local id
    id=$("${COMPOSE[@]}" ps -q sink) && [ -n "$id" ] &&
        [ "$("$DOCKER" inspect -f '{{.State.Status}}' "$id")" = exited ]
}
step "compose --profile sim up -d camera sink" "${COMPOSE[@]}" --profile sim up -d --no-build camera sink
wait_for "sim camera -> service -> sink ($FRAMES frames)" 300 sink_done
"${COMPOSE[@]}" --profile sim logs --no-color sink | grep -o 'INFO rtnstream.commands.sink: .*' | sed 's/^/check-image:   sink: /'
sink_id=$("${COMPOSE[@]}" ps -q sink)
[ "$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$sink_id")" = 0 ] || fail "the sink exited with an error"
files=$("${COMPOSE[@]}" --profile sim run --rm --no-deps --entrypoint sh sink -c \
    'ls /home/rtnstream/sim/corrected | grep -c "\.fits$"' 2>/dev/null | tr -d '\r')
[ "$files" = "$FRAMES" ] || fail "the sink wrote $files FITS files, not $FRAMES"
curl -fsS "${AUTH[@]}" -X POST "$URL/v1/jobs/$JOB/stop" >/dev/null
counters=$(curl -fsS "$URL/v1/jobs/$JOB" | json_get '(d["state"], d["counters"]["frames_in"], d["counters"]["frames_out"])')
say "job $JOB (state, frames in, frames out): $counters; $files corrected FITS files in the sim volume"
[ "$counters" = "('stopped', $FRAMES, $FRAMES)" ] || fail "job counters $counters"

# ------------------------------------------------------------------------------------------- down and up
step "compose down (volumes kept)" "${COMPOSE[@]}" --profile sim down
step "compose up -d redis rtnstream (again)" "${COMPOSE[@]}" up -d --no-build redis rtnstream
wait_for "rtnstream healthy again" 180 healthy
after=$(curl -fsS "$URL/v1/jobs/$JOB" | json_get '(d["state"], d["counters"]["frames_out"])')
[ "$after" = "('stopped', $FRAMES)" ] || fail "after down and up, job $JOB is $after"
curl -fsS "$URL/v1/cubes/$CUBE" >/dev/null || fail "after down and up, cube $CUBE is gone"
say "after down and up: job $JOB $after, cube $CUBE still stored"

say "passed; timings:"
printf 'check-image:   %s\n' "${TIMES[@]}"
