"""Shared pieces of the frame sources (camera, replay, INDI, Alpaca): a sender that says when nothing takes its
frames, and a watch on the job's counters that reports the messages the job rejected.

ZeroMQ connects lazily and queues silently: a PUSH socket pointed at a port where nothing listens accepts
messages and never says a word. :class:`SourceSender` first connects a probe socket and waits for its ZeroMQ
handshake (a socket monitor), so a source whose endpoint has no job fails within ``connect_timeout_s`` with the
endpoint named; it then sends with ``ZMQ_IMMEDIATE`` (messages go only to completed connections) and a short
send timeout, so a send that waits later in the run (the job went away, or pushes back) is logged while it
waits. A job's rejections never travel back on the ingest socket; :class:`JobWatch` reads them from the job's
counters over HTTP (``GET /v1/jobs/{id}``).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import zmq

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameSender
from rtnstream.kernels.exceptions import RTNStreamError

__all__ = ["SourceError", "SourceSender", "JobWatch", "open_sender", "finish", "date_obs"]

log = logging.getLogger(__name__)

_SEND_SLICE_S = 0.5  # one blocking send attempt; a send is retried in slices of this length


def date_obs(start: datetime, timespec: str = "milliseconds") -> str:
    """``start`` as FITS DATE-OBS: ISO 8601 in UTC, no offset (a naive datetime is taken as UTC).

    Parameters
    ----------
    start : datetime.datetime
    timespec : {'milliseconds', 'microseconds', 'seconds'}
        Precision, as :meth:`datetime.datetime.isoformat` takes it.
    """
    start = start.astimezone(UTC).replace(tzinfo=None) if start.tzinfo is not None else start
    return start.isoformat(timespec=timespec)


class SourceError(RTNStreamError):
    """A source cannot deliver: nothing listens at the ingest endpoint, or the job cannot be found."""


class JobWatch:
    """The rejections of one job, read from its counters over HTTP.

    Parameters
    ----------
    service : str
        Base URL of the service, e.g. ``http://127.0.0.1:8000``.
    job : str, optional
        The job's id. Default: the running job whose ingest endpoint is ``ingest``.
    ingest : str, optional
        The ingest endpoint the source sends to (to find the job when ``job`` is not given).
    token : str, optional
        Bearer token of the service.

    Raises
    ------
    SourceError
        No job is given and no running job has ``ingest`` as its ingest endpoint, or the service cannot be reached.
    """

    def __init__(self, service: str, job: str | None = None, ingest: str | None = None,
                 token: str | None = None) -> None:
        self._client = ControlClient(service, token, timeout_s=10.0)
        try:
            if job is None:
                running = [j for j in self._client.list_jobs()
                           if j["state"] == "running" and j["config"]["ingest"] == ingest]
                if len(running) != 1:
                    raise SourceError(f"service {service}: {len(running)} running jobs have ingest {ingest!r}; "
                                      f"name the job (job=..., --job ID)")
                job = running[0]["id"]
            self.job = job
            counters = self._counters()
        except RTNStreamError as exc:  # ServiceError: unreachable, unknown job
            self._client.close()
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"service {service}, job {job}: {exc}") from exc
        self._in0 = counters["frames_in"]
        self._rejected0 = dict(counters["rejected"])
        self._reported: dict[str, int] = {}
        self._polled_s = 0.0

    def _counters(self) -> dict[str, Any]:
        return self._client.get_job(self.job)["counters"]

    def _since_open(self, counters: dict[str, Any]) -> dict[str, int]:
        out = {r: n - self._rejected0.get(r, 0) for r, n in counters["rejected"].items()}
        return {r: n for r, n in out.items() if n > 0}

    def _report(self, counters: dict[str, Any]) -> dict[str, int]:
        rejected = self._since_open(counters)
        new = {r: n - self._reported.get(r, 0) for r, n in rejected.items() if n > self._reported.get(r, 0)}
        if new:
            log.warning("job %s rejected %s (reasons: docs/protocol.md, 'Rejected messages')", self.job,
                        ", ".join(f"{n} ({r})" for r, n in sorted(new.items())))
        self._reported = rejected
        return rejected

    def poll(self, every_s: float = 1.0) -> dict[str, int]:
        """Read the counters (at most once per ``every_s`` seconds) and log the rejections that are new.

        Returns
        -------
        dict
            Reason -> messages rejected since this watch opened, as last read.
        """
        if time.monotonic() - self._polled_s >= every_s:
            self._polled_s = time.monotonic()
            return self._report(self._counters())
        return dict(self._reported)

    def settle(self, n_frames: int, timeout_s: float = 10.0) -> dict[str, int]:
        """Wait until the job has counted ``n_frames`` messages since this watch opened and holds none in its
        queue (at most ``timeout_s`` seconds); log and return the rejections (reason -> messages) since then.

        A start or end message is counted only when rejected, so the count may still grow by those two."""
        deadline = time.monotonic() + timeout_s
        while True:
            counters = self._counters()
            settled = counters["frames_in"] - self._in0 >= n_frames and counters["in_flight"] == 0
            if settled or time.monotonic() > deadline:
                return self._report(counters)
            time.sleep(0.05)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


class SourceSender(FrameSender):
    """A :class:`~rtnstream.clients.stream.FrameSender` that sends only over a completed connection.

    Parameters
    ----------
    endpoint, camera :
        As for :class:`FrameSender`.
    connect_timeout_s : float > 0
        How long to wait for a connection to the endpoint when opening, s.
    stall_warn_s : float > 0
        A later send that waits this long (the job went away, or pushes back) is logged, and again each time
        as long again passes; it goes on waiting.
    watch : JobWatch, optional
        Polled after each frame (at most once a second): the job's new rejections are logged.
    **kwargs :
        Passed to :class:`FrameSender` (``sndhwm``, ``linger_s``, ``curve``).

    Raises
    ------
    SourceError
        Nothing accepted a connection at ``endpoint`` within ``connect_timeout_s``.
    ValueError
        ``connect_timeout_s`` or ``stall_warn_s`` is not > 0.
    """

    def __init__(self, endpoint: str, camera: str, connect_timeout_s: float = 10.0, stall_warn_s: float = 10.0,
                 watch: JobWatch | None = None, **kwargs: Any) -> None:
        for name, value in (("connect_timeout_s", connect_timeout_s), ("stall_warn_s", stall_warn_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 (s), got {value}")
        self.endpoint = endpoint
        self.connect_timeout_s = connect_timeout_s
        self.stall_warn_s = stall_warn_s
        self.watch = watch
        self.frames_sent = 0
        self._context = zmq.Context()
        try:
            _probe(self._context, endpoint, connect_timeout_s, kwargs.get("curve"))
        except BaseException:
            self._context.term()
            raise
        self._context.setsockopt(zmq.IMMEDIATE, 1)
        self._context.setsockopt(zmq.SNDTIMEO, int(_SEND_SLICE_S * 1000))
        super().__init__(endpoint, camera, context=self._context, **kwargs)

    def send_parts(self, parts: list[Any]) -> None:
        """Send one message, waiting for the job as long as it takes (logged every ``stall_warn_s``)."""
        t0 = time.monotonic()
        warned = 0
        while True:
            try:
                super().send_parts(parts)
                break
            except zmq.Again:
                waited = time.monotonic() - t0
                if waited >= (warned + 1) * self.stall_warn_s:
                    warned += 1
                    log.warning("%s has taken nothing for %.0f s: the job is gone or not keeping up; still trying",
                                self.endpoint, waited)
        if len(parts) > 1:
            self.frames_sent += 1
            if self.watch is not None:
                self.watch.poll()

    def close(self) -> None:
        """Close the socket (after the queued messages went out, at most ``linger_s``) and its context."""
        super().close()
        self._context.term()


def _probe(context: zmq.Context, endpoint: str, timeout_s: float, curve: Any = None) -> None:
    """Wait until a PUSH socket completes a ZeroMQ handshake with ``endpoint``; SourceError after ``timeout_s``."""
    probe = context.socket(zmq.PUSH)
    probe.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(probe)
    monitor = probe.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        probe.connect(endpoint)
        if not monitor.poll(int(timeout_s * 1000)):
            raise SourceError(f"nothing listens at {endpoint}: no connection within {timeout_s:g} s (is the job "
                              f"running, and is this its ingest endpoint?)")
    finally:
        probe.disable_monitor()
        monitor.close(linger=0)
        probe.close()


def open_sender(ingest: str, camera: str, service: str | None = None, job: str | None = None,
                connect_timeout_s: float = 10.0, token: str | None = None) -> SourceSender:
    """A :class:`SourceSender` to ``ingest``, watching the job's rejections when ``service`` is given.

    Parameters
    ----------
    ingest : str
        The job's ingest endpoint.
    camera : str
        Camera name in the headers (the job's ``camera``).
    service : str, optional
        Base URL of the service; without it rejections are not learned of (logged once).
    job : str, optional
        The job's id (default: the running job with this ingest endpoint).
    connect_timeout_s : float > 0
    token : str, optional
        Bearer token of the service.
    """
    if service is None:
        log.info("no --service given: the job's rejections will not be reported here")
        return SourceSender(ingest, camera, connect_timeout_s)
    watch = JobWatch(service, job, ingest, token)
    try:
        return SourceSender(ingest, camera, connect_timeout_s, watch=watch)
    except BaseException:
        watch.close()
        raise


def finish(sender: SourceSender, what: str) -> int:
    """Close ``sender``; report what was sent and, with a watch, what the job rejected of it.

    Returns
    -------
    int
        The exit status: 0, or 1 when the job rejected any message.
    """
    sender.close()
    if sender.watch is None:
        log.info("%s: sent %d frames to %s", what, sender.frames_sent, sender.endpoint)
        return 0
    try:
        rejected = sender.watch.settle(sender.frames_sent)
    finally:
        sender.watch.close()
    if rejected:
        log.error("%s: sent %d frames to %s; job %s rejected %d messages (%s)", what, sender.frames_sent,
                  sender.endpoint, sender.watch.job, sum(rejected.values()),
                  ", ".join(f"{r}: {n}" for r, n in sorted(rejected.items())))
        return 1
    log.info("%s: sent %d frames to %s; job %s took every one", what, sender.frames_sent, sender.endpoint,
             sender.watch.job)
    return 0
