"""The quota engine: Redis Lua scripts that admit and settle requests, and what surrounds them."""
