"""The plugin's FastAPI app, mounted by Airflow's API server at :data:`URL_PREFIX`.

No OpenAPI or docs pages: Airflow does not protect a plugin's app, so only routes that declare
Airflow's access dependencies exist here.
"""

from __future__ import annotations

from fastapi import FastAPI

from objstore_backend.plugin import api, overview, pages

__all__ = ["URL_PREFIX", "create_app"]

URL_PREFIX = "/objstore-backend"


def create_app() -> FastAPI:
    app = FastAPI(
        title="objstore-backend state store",
        description="Airflow's state-store API over the bucket, and its pages",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.sources = api.Sources()
    app.state.inventories = overview.Inventories()
    app.include_router(api.router)
    app.include_router(overview.router)
    app.include_router(pages.router)
    return app
