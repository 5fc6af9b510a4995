"""Request and response bodies of the control plane (pydantic models; they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from rtnstream.kernels.cupy_backend import MAX_SPATIAL_SIZE, MAX_WINDOW
from rtnstream.kernels.engine import SUPPORTED_DTYPES, EngineSettings
from rtnstream.service.cubes import CUBE_ID_PATTERN
from rtnstream.service.endpoints import parse_endpoint
from rtnstream.service.jobstore import JOB_STATES

__all__ = [
    "PRESET_NAME_PATTERN",
    "JobDefaults",
    "CameraPreset",
    "ErrorDetail",
    "ErrorEnvelope",
    "CubeInfo",
    "JobCreate",
    "JobConfig",
    "JobCreated",
    "JobCounters",
    "Throughput",
    "Latency",
    "SeriesSummary",
    "JobStatus",
    "JobList",
    "Health",
    "Readiness",
]

#: Camera preset names: the file name ``<name>.toml`` in the presets folder (no path separators).
PRESET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _endpoint_form(value: str | None) -> str | None:
    if value is not None:
        parse_endpoint(value)
    return value


#: ZeroMQ endpoints a job may bind: ``tcp://host:port`` (port 1-65535 or ``*``), ``ipc://path`` (in the
#: service's socket folder), ``inproc://name``, as :func:`rtnstream.service.endpoints.parse_endpoint` checks.
Endpoint = Annotated[str, Field(max_length=300, examples=["tcp://0.0.0.0:5555"]), AfterValidator(_endpoint_form)]
#: Limits of the service: what both backends take (the CUDA kernels' own limits).
Window = Annotated[int, Field(strict=True, ge=4, le=MAX_WINDOW,
                              description=f"temporal window W, frames (even, 4..{MAX_WINDOW})")]
SpatialSize = Annotated[int, Field(strict=True, ge=3, le=MAX_SPATIAL_SIZE,
                                   description=f"spatial neighbourhood side, pixels (odd, 3..{MAX_SPATIAL_SIZE})")]
QueueFrames = Annotated[int, Field(strict=True, ge=1, le=4096)]
OutputFrames = Annotated[int, Field(strict=True, ge=1, le=1024)]
OutputBytes = Annotated[int, Field(strict=True, ge=1 << 20, le=1 << 40)]
#: The jump test's significance: (1e-12, 0.5); a smaller alpha would never correct anything.
Alpha = Annotated[float, Field(strict=True, ge=1e-12, lt=0.5, description="significance of the jump test, in "
                                                                           "[1e-12, 0.5)")]
KVar = Annotated[float, Field(strict=True, gt=0, le=1e6, description="variability veto factor, in (0, 1e6]")]


def _engine_rule(value: Any, info: ValidationInfo) -> Any:
    """Check one engine setting with the engine's own rule (its message names the field)."""
    if value is not None:
        EngineSettings(**{info.field_name: value})
    return value


class ErrorDetail(BaseModel):
    """One error: a machine-readable ``code``, a sentence, and the request field at fault if any."""

    code: str
    message: str
    field: str | None = None


class ErrorEnvelope(BaseModel):
    """Every HTTP error body: ``{"error": {"code", "message", "field"?}}``."""

    error: ErrorDetail


class CubeInfo(BaseModel):
    """A stored RTN cube."""

    id: str = Field(description="content hash of the cube (16 hex digits)")
    shape: list[int] = Field(description="[ny, nx], pixels")
    n_rtn: int = Field(description="number of RTN pixels")
    gain_e_per_adu: float = Field(description="conversion gain, e-/ADU")


class _JobOptions(BaseModel):
    camera: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$",
                        description="camera stream name")
    cube_id: str = Field(pattern=CUBE_ID_PATTERN, description="id of an uploaded RTN cube")
    ingest: Endpoint = Field(description="ZeroMQ endpoint the job's PULL socket binds")
    publish: Endpoint = Field(description="ZeroMQ endpoint the job's PUB socket binds (best effort)")
    push: Endpoint | None = Field(None, description="optional endpoint of the lossless output (one consumer, "
                                                    "credit protocol: docs/protocol.md)")
    reference: Literal["temporal", "causal", "spatial"] = "temporal"
    window: Window = 10
    alpha: Alpha = 0.003
    k_var: KVar = 1.5
    spatial_size: SpatialSize = 5
    overload: Literal["block", "passthrough", "drop"] = "block"
    states: bool = Field(False, description="send each output frame's per-pixel decisions (a third message part, "
                                            "rtn.states): the FITS sink then writes the same DQ bits as offline "
                                            "correction; costs one byte per RTN pixel per frame")
    preset: str | None = Field(None, pattern=PRESET_NAME_PATTERN,
                               description="camera preset whose job defaults fill the fields not given "
                                           "(config/cameras/<preset>.toml)")

    def engine_settings(self) -> EngineSettings:
        """The engine settings of this job."""
        return EngineSettings(reference=self.reference, window=self.window, spatial_size=self.spatial_size,
                              alpha=self.alpha, k_var=self.k_var)


class JobCreate(_JobOptions):
    """``POST /v1/jobs``: a correction job for one camera stream."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "numpy", "cupy"] | None = Field(None, description="default: the service's")
    queue_frames: QueueFrames | None = Field(None, description="bound of the job's frame queue (default: the "
                                                               "service's)")
    output_queue_frames: OutputFrames | None = Field(
        None, description="bound of each output queue, frames (default: the service's)")
    output_queue_bytes: OutputBytes | None = Field(
        None, description="bound of each output queue, bytes, counted for 8-byte pixels (default: the service's)")

    _engine_rule = field_validator("window", "alpha", "k_var", "spatial_size")(_engine_rule)

    @model_validator(mode="after")
    def _distinct_endpoints(self) -> JobCreate:
        # endpoints with a wildcard port ("tcp://host:*") each get a free port of their own
        bound = [e for e in (self.ingest, self.publish, self.push) if e is not None and not e.endswith(":*")]
        if len(set(bound)) != len(bound):
            raise ValueError("ingest, publish and push must be different endpoints")
        return self


class JobDefaults(BaseModel):
    """The ``[job]`` table of a camera preset: defaults of the :class:`JobCreate` fields a request leaves out."""

    model_config = ConfigDict(extra="forbid")

    reference: Literal["temporal", "causal", "spatial"] | None = None
    window: Window | None = None
    alpha: Alpha | None = None
    k_var: KVar | None = None
    spatial_size: SpatialSize | None = None
    overload: Literal["block", "passthrough", "drop"] | None = None
    backend: Literal["auto", "numpy", "cupy"] | None = None
    queue_frames: QueueFrames | None = None
    output_queue_frames: OutputFrames | None = None
    output_queue_bytes: OutputBytes | None = None

    _engine_rule = field_validator("window", "alpha", "k_var", "spatial_size")(_engine_rule)


class CameraPreset(BaseModel):
    """A camera in one readout mode (``config/cameras/<name>.toml``) and the job defaults that suit it.

    Attributes
    ----------
    name : str
        Equals the file name without ``.toml``.
    shape : (ny, nx)
        Full frame, pixels; a job naming the preset needs a cube of this shape.
    dtype : str
        NumPy dtype string of the frames (``"<u2"``).
    gain_e_per_adu : float > 0
        Conversion gain in this mode, e-/ADU.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=PRESET_NAME_PATTERN)
    description: str
    camera: str = Field(description="camera model")
    sensor: str
    shape: tuple[int, int] = Field(description="[ny, nx], pixels")
    dtype: str = Field(description="numpy dtype string of the frames")
    bit_depth: int = Field(ge=1, le=32, description="ADC bits")
    gain_e_per_adu: float = Field(gt=0, description="conversion gain, e-/ADU")
    readout_mode: str
    gain_setting: int | None = Field(None, description="the camera driver's gain setting")
    offset_setting: int | None = Field(None, description="the camera driver's offset setting")
    temperature_c: float | None = Field(None, description="sensor set-point, degC")
    read_noise_e: float | None = Field(None, gt=0, description="median read noise, electron")
    job: JobDefaults = Field(default_factory=JobDefaults)

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, shape: tuple[int, int]) -> tuple[int, int]:
        if min(shape) < 1:
            raise ValueError(f"shape must be [ny, nx] positive integers, got {list(shape)}")
        return shape

    @field_validator("dtype")
    @classmethod
    def _supported_dtype(cls, dtype: str) -> str:
        try:
            native = np.dtype(dtype).newbyteorder("=")
        except TypeError:
            raise ValueError(f"dtype must be a numpy dtype string, got {dtype!r}") from None
        if native not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; supported: "
                             f"{', '.join(d.str for d in SUPPORTED_DTYPES)}")
        return dtype


class JobConfig(_JobOptions):
    """A job's configuration as it runs (defaults resolved)."""

    backend: str
    queue_frames: int
    output_queue_frames: int = 16
    output_queue_bytes: int = 1 << 30


class JobCreated(BaseModel):
    """``POST /v1/jobs`` answer."""

    id: str


class JobCounters(BaseModel):
    """Totals since the job started: ``frames_in = frames_out + sum(rejected) + dropped + abandoned + in_flight``
    in every snapshot, and ``in_flight`` is 0 once the job is idle."""

    frames_in: int = 0
    frames_out: int = Field(0, description="frames delivered (with a lossless output: acknowledged by its consumer)")
    in_flight: int = Field(0, description="frames accepted and not yet delivered (queued, in the temporal window, "
                                          "or awaiting the lossless consumer's acknowledgement)")
    rejected: dict[str, int] = Field(default_factory=dict, description="rejected messages by reason")
    dropped: int = 0
    passthrough: int = 0
    seq_gaps: int = 0
    seq_out_of_order: int = 0
    abandoned: int = 0
    corrections_low: int = 0
    corrections_high: int = 0
    vetoed: int = 0
    out_of_table: int = 0
    series_started: int = 0
    series_finished: int = 0
    bias_maps_failed: int = Field(0, description="finished series whose bias offset map could not be written "
                                                 "(listed with bias_offset false)")


class Throughput(BaseModel):
    """Published frames over the last ``window_s`` seconds."""

    fps: float = 0.0
    mpix_per_s: float = 0.0
    window_s: float = 0.0


class Latency(BaseModel):
    """Latency of published frames, ms, over the same window (None without frames)."""

    p50: float | None = None
    p99: float | None = None
    samples: int = 0


class SeriesSummary(BaseModel):
    """A finished series of the job."""

    series: str
    camera: str
    frames: int
    finished_at: float
    bias_offset: bool = Field(description="whether the bias offset map can be downloaded")
    index: int | None = Field(None, description="1-based ordinal of the series in the job (a series id may "
                                                "be used more than once; each keeps its own map)")


class JobStatus(BaseModel):
    """``GET /v1/jobs/{id}``."""

    id: str
    state: Literal[JOB_STATES]  # type: ignore[valid-type]
    live: bool = Field(description="true when this service process runs the job's pipeline")
    config: JobConfig
    counters: JobCounters
    throughput: Throughput
    latency_ms: Latency = Field(description="from the frame's arrival at the service to its publication")
    latency_from_timestamp_ms: Latency = Field(
        default_factory=Latency, description="from the producer's header timestamp to publication (includes the "
                                             "transport, the socket queues and any clock offset)")
    outputs: dict[str, Any] | None = Field(None, description="output bounds and the lossless output's state")
    backend: str | None = None
    device: str | None = None
    endpoints: dict[str, str | None] = Field(default_factory=dict, description="endpoints actually bound")
    queue_depth: int | None = None
    series: list[SeriesSummary] = Field(default_factory=list)
    error: str | None = None
    created_at: float
    updated_at: float | None = None
    node: str | None = Field(None, description="node_id of the service process that runs (or ran) the job")
    instance: str | None = Field(None, description="instance id of the service process that runs (or ran) "
                                                   "the job")


class JobList(BaseModel):
    """``GET /v1/jobs``."""

    jobs: list[JobStatus]
    next_cursor: str | None = Field(None, description="pass as ``cursor`` for the next page; null on the last")


class Health(BaseModel):
    """``/healthz`` and ``/readyz``."""

    status: Literal["ok", "ready", "not_ready"]
    redis: bool | None = None
    jobs_running: int | None = None


class Readiness(Health):
    """``/readyz``: whether Redis answers, and how far the buffered job state writes are behind."""

    pending_writes: int = Field(0, description="job state writes waiting for Redis")
    oldest_pending_s: float | None = Field(None, description="age of the oldest waiting write, s")
