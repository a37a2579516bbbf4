"""Runs the gateway under uvicorn with uvloop and httptools."""

from __future__ import annotations

import logging

import uvicorn
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.settings import Settings


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                          lifespan="on", access_log=False, log_level="warning", backlog=4096,
                          proxy_headers=False, server_header=False)


def serve(settings: Settings | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings or Settings.from_env()
    uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()
