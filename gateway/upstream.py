"""Pooled keep-alive HTTP client to the model upstreams (aiohttp; httpx is too slow for the hot path)."""

from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL

from gateway.errors import ConfigError
from gateway.settings import Settings


class Upstreams:
    """One aiohttp session for all upstreams; `base_url(name)` and `credential(name)` route by name."""

    def __init__(self, settings: Settings, names: tuple[str, ...]) -> None:
        missing = [n for n in names if n not in settings.upstream_urls]
        if missing:
            raise ConfigError(", ".join(f"AIHUB_UPSTREAM_{n.upper()}_URL is required but not set"
                                        for n in missing))
        self.urls = {n: settings.upstream_urls[n] for n in names}
        self.keys = {n: settings.upstream_keys.get(n) for n in names}
        self.default = names[0]
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s,
                                             sock_read=settings.read_timeout_s)
        self.pool_size = settings.upstream_pool_size
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=self.pool_size,
                                             keepalive_timeout=30, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout,
                                                  auto_decompress=False, skip_auto_headers=("User-Agent",))
        return self._session

    def url(self, name: str, path: str) -> URL:
        """The upstream URL of a plain path (gateway.paths), taken as already encoded: sent byte for byte."""
        return URL(f"{self.urls[name]}{path}", encoded=True)

    async def request(self, name: str, method: str, path: str, headers: dict[str, str],
                      body: Any) -> aiohttp.ClientResponse:
        """`body`: bytes, or an aiohttp.FormData (which sets its own multipart content-type)."""
        return await self.session.request(method, self.url(name, path), headers=headers,
                                          data=body, allow_redirects=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
