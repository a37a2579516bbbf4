"""The customer dashboard at `/dashboard`: one HTML page, a stylesheet and a few small ES modules from
`api/static/dashboard/` (no build step, no CDN). It runs in the browser against the management API (`/api/v1`)
with the member's bearer token, which the page keeps in sessionStorage and never puts in a URL, so no access log
sees it.

Served by Starlette routes (`routes()`, mounted by api/mount.py beside `/api`): `GET /dashboard` (the page) and
`GET /dashboard/static/<name>` (only the files that are in the static folder when the module is loaded, by name:
no subfolders, so no path can leave it). Every answer carries a strict Content-Security-Policy (scripts and styles
from this origin only, nothing inline, no framing) and the other security headers in SECURITY_HEADERS.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

STATIC_DIR = Path(__file__).resolve().parent / "static" / "dashboard"
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}

CSP = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "connect-src 'self'", "font-src 'self'", "manifest-src 'self'", "base-uri 'none'", "form-action 'none'",
    "frame-ancestors 'none'"))
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, content type) of every servable file in the static folder (read once: they are small)."""
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        kind = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and kind is not None and path.name != "index.html":
            files[path.name] = (path.read_bytes(), kind)
    return files


def _headers(cache: str) -> dict[str, str]:
    return {**SECURITY_HEADERS, "Cache-Control": cache}


def routes() -> list[BaseRoute]:
    """`GET /dashboard` (and `/dashboard/` redirected to it) and `GET /dashboard/static/<name>`."""
    page = (STATIC_DIR / "index.html").read_bytes()
    files = _static_files()

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_headers("no-store"))

    async def slash(request: Request) -> Response:
        return RedirectResponse("/dashboard", status_code=308, headers=_headers("no-store"))

    async def static(request: Request) -> Response:
        found = files.get(str(request.path_params["name"]))
        if found is None:
            return PlainTextResponse("Not found.", status_code=404, headers=_headers("no-store"))
        content, kind = found
        return Response(content, media_type=kind, headers=_headers("no-cache"))

    return [Route("/dashboard", index, methods=["GET", "HEAD"]),
            Route("/dashboard/", slash, methods=["GET", "HEAD"]),
            Route("/dashboard/static/{name}", static, methods=["GET", "HEAD"])]
