"""Pooled keep-alive HTTP client to the model upstreams (aiohttp; httpx is too slow for the hot path)."""

from __future__ import annotations

import aiohttp

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

    def url(self, name: str, path: str, query: str) -> str:
        return f"{self.urls[name]}{path}" + (f"?{query}" if query else "")

    async def request(self, name: str, method: str, path: str, query: str, headers: dict[str, str],
                      body: bytes) -> aiohttp.ClientResponse:
        return await self.session.request(method, self.url(name, path, query), headers=headers,
                                          data=body if body else None, allow_redirects=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
