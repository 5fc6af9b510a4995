"""The FastAPI application: ``create_app(settings)``; ``lifespan`` builds Redis, cube store, job manager."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import zmq
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from rtnstream import __version__
from rtnstream.service.cubes import CubeStore
from rtnstream.service.curve import CurveServer, start_authenticator
from rtnstream.service.errors import install_error_handlers
from rtnstream.service.jobs import JobManager
from rtnstream.service.jobstore import JobStore
from rtnstream.service.metrics import make_registry
from rtnstream.service.redis_conn import open_redis
from rtnstream.service.routers import cubes, dashboard, health, jobs
from rtnstream.service.settings import ServiceSettings, get_settings
from rtnstream.service.uploads import STREAMED_UPLOADS, BodyGuard

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the control-plane app (nothing is started until the server runs its lifespan).

    Parameters
    ----------
    settings : ServiceSettings, optional
        Default: :func:`get_settings` (the environment).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis_handle = open_redis(settings)
        context = zmq.Context(io_threads=settings.io_threads)  # sized for full frames: docs/service.md
        curve, authenticator = None, None
        if settings.zmq_curve_secret_file is not None:
            curve = CurveServer.from_file(settings.zmq_curve_secret_file)
            authenticator = start_authenticator(context, settings.zmq_curve_clients_dir)
        manager = JobManager(settings, JobStore(redis_handle.client, settings.events_maxlen),
                             CubeStore(settings.cube_dir), context, curve)
        manager.start()
        app.state.manager = manager
        app.state.cubes = manager.cubes
        app.state.metrics = make_registry(manager)
        log.info("rtnstream %s control plane ready (job state: %s, data: %s)", __version__,
                 redis_handle.where, settings.data_dir)
        try:
            yield
        finally:
            manager.close()
            if authenticator is not None:
                authenticator.stop()
            context.term()
            redis_handle.close()

    # /docs and /redoc with the Swagger UI and ReDoc assets of the fastapi-offline package, served by this
    # app (under /static-offline-docs), not from a CDN: they work at an observatory without internet
    app = FastAPIOffline(title="rtnstream", version=__version__, lifespan=lifespan,
                         summary="Live RTN correction of CMOS camera frames: control plane")
    app.state.settings = settings
    # the token of a mutating call is checked, and bodies held to their limits, before any byte is read
    app.add_middleware(BodyGuard, settings=settings, streamed=STREAMED_UPLOADS)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(cubes.router)
    app.include_router(jobs.router)
    app.include_router(dashboard.router)
    return app
