"""The management API (FastAPI on the gateway's Starlette): JSON under `/api/v1/`, the OpenAPI 3.1 document at
`/api/openapi.json`, its docs page at `/api/docs`. Mounted at `/api` by `gateway.stack` (same port as the proxy
in `make up`); routes live one resource per module in `api/routes/` (each module's `router`, found at start-up).

Every answer that is not 2xx has the one error shape (api/errors.py); every route but invitation acceptance needs
`Authorization: Bearer` (api/auth.py); rights per role in api/permissions.py.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

import api.routes
from api.auth import current_caller
from api.context import ApiContext
from api.errors import HANDLERS, ErrorResponse
from api.guard import ApiGuard

TITLE = "aihub management API"
ERROR_STATUSES = {"400": "Invalid request (the error's `code` and `param` say what)",
                  "401": "Missing or unknown token", "403": "The caller's role may not do this",
                  "404": "No such resource (or another tenant's)", "409": "Conflicts with the current state"}


IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "Makes a retry safe: the first answer is replayed for 24 hours (docs/api.md)",
                   "schema": {"type": "string", "minLength": 1, "maxLength": 255}}


def route_modules() -> list[Any]:
    names = sorted(m.name for m in pkgutil.iter_modules(api.routes.__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"api.routes.{name}") for name in names]


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=TITLE, version="1", routes=app.routes, description=__doc__)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schemas["ErrorResponse"].pop("$defs", {}).items():
        schemas[name] = sub
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                "description": "Operator token, member token or API key"}}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            public = operation.get("security") == []
            for status, description in ERROR_STATUSES.items():
                if public and status in ("401", "403"):
                    continue
                responses.setdefault(status, {"description": description, **error})
            if not public:
                operation["security"] = [{"bearer": []}]
    for path in schema.get("paths", {}).values():
        if "post" in path and path["post"].get("security") != []:
            path["post"].setdefault("parameters", []).append(IDEMPOTENCY_KEY)
    app.openapi_schema = schema
    return schema


def guard(request: Request) -> None:
    """Runs before every route's own parameters are read: authenticates the caller and checks the route's
    `x-permission` (api/params.needs) on the path's `account_id`, so a caller without the right gets 401/403/404
    before any validation of what it sent. Routes marked public (`security: []`) are skipped."""
    extra = getattr(request.scope.get("route"), "openapi_extra", None) or {}
    if extra.get("security") == []:
        return
    caller = current_caller(request)
    permission = extra.get("x-permission")
    if permission:
        caller.require(str(permission), request.path_params.get("account_id"))


def add_docs_page(app: FastAPI) -> None:
    """`/docs`: Swagger UI (5.x, OpenAPI 3.1) served from the `swagger-ui-bundle-v2` package under
    `/docs-static/`, so the page works without a CDN."""
    from swagger_ui_bundle import swagger_ui_path

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{TITLE}: docs",
                                   swagger_js_url=f"{root}/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/docs-static/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs-static/favicon-32x32.png")
    app.add_route("/docs", docs, include_in_schema=False)
    app.mount("/docs-static", StaticFiles(directory=swagger_ui_path), name="docs-static")


def create_api(ctx: ApiContext) -> FastAPI:
    """The API as an ASGI app, to mount at `/api`."""
    app = FastAPI(title=TITLE, version="1", openapi_url="/openapi.json", docs_url=None, redoc_url=None,
                  swagger_ui_oauth2_redirect_url=None, dependencies=[Depends(guard)])
    app.state.ctx = ctx
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)
    for module in route_modules():
        app.include_router(module.router, prefix="/v1")
    app.router.redirect_slashes = False          # `/v1/me/` is not a path of ours: 404, not a redirect
    add_docs_page(app)
    app.add_middleware(ApiGuard, ctx=ctx)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def endpoint_table(app: FastAPI) -> str:
    """The endpoints as a markdown table (method, path, permission, summary), for docs/api.md."""
    rows = ["| method | path | permission | what |", "|---|---|---|---|"]
    for path, item in app.openapi()["paths"].items():
        for method, op in item.items():
            permission = op.get("x-permission") or ("none (the token is the proof)" if op.get("security") == []
                                                    else "any caller")
            rows.append(f"| {method.upper()} | `/api{path}` | `{permission}` | {op.get('summary', '')} |"
                        .replace("`none (the token is the proof)`", "none (the token is the proof)")
                        .replace("`any caller`", "any caller"))
    return "\n".join(rows)
