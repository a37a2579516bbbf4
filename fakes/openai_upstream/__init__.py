"""A fast, deterministic fake OpenAI-compatible upstream for tests, benchmarks and `make up`.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with "stream": true support),
POST /v1/embeddings, GET /v1/models; any other /v1/* path echoes {"object": "echo", "path", "method"}.
Introspection: GET /_fake/requests, POST /_fake/reset, GET /_fake/stats (never recorded, never authed).

Token accounting: prompt_tokens = whitespace-separated words in all message contents (or prompt/input)
+ 3 per chat message; the completion is N "lorem ipsum" words, N = min(max_completion_tokens or
max_tokens, 16) (finish_reason "length" when the limit cut it short, else "stop").  Models starting
with "o" add 4 reasoning_tokens, which are included in completion_tokens as with the real API.

Per-request control headers: X-Fake-Status (400..599), X-Fake-Latency-Ms, X-Fake-Chunk-Delay-Ms,
X-Fake-Chunks, X-Fake-Usage ("none" or "<prompt>,<completion>[,<total>]"), X-Fake-Cached-Tokens,
X-Fake-Drop: mid-stream, X-Fake-Hang: 1.  A malformed control header is answered with HTTP 400.
"""

from fakes.openai_upstream.app import DEFAULT_MODELS, RecordedRequest, UpstreamApp
from fakes.openai_upstream.control import Behaviour, parse_behaviour
from fakes.openai_upstream.server import FakeUpstream, free_port, spawn_process, stop_process

__all__ = [
    "DEFAULT_MODELS",
    "Behaviour",
    "FakeUpstream",
    "RecordedRequest",
    "UpstreamApp",
    "free_port",
    "parse_behaviour",
    "spawn_process",
    "stop_process",
]
