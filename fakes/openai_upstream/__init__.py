"""A fast, deterministic fake OpenAI-compatible upstream for tests, benchmarks and `make up`.

Endpoints: POST /v1/chat/completions (honours `n`), POST /v1/completions (a prompt or a list of prompts
× `n`, `best_of`), POST /v1/responses (all three with "stream": true support), POST /v1/embeddings,
GET /v1/models, POST /v1/images/generations|edits|variations, POST /v1/audio/speech|transcriptions|translations,
POST /v1/moderations (see media.py); any other /v1/* path echoes {"object": "echo", "path", "method",
"raw_path"}.  Multipart bodies are parsed for the image and audio endpoints.
Introspection: GET /_fake/requests, POST /_fake/reset, GET /_fake/stats (never recorded, never authed).
Each recorded request: method, path (decoded), raw_path (as received, without the query), query (raw),
headers (lower-cased names), body (parsed JSON; for multipart/form-data {field: text, file field:
{"filename", "size"}}, a repeated field as a list).

Token accounting: prompt_tokens = whitespace-separated words in all message contents (or prompt/input)
+ 3 per chat message (Responses: per input item, a string input and the instructions count as one
message each); the completion is N "lorem ipsum" words, N = min(max_completion_tokens or max_tokens or
max_output_tokens, 16) (finish_reason "length" / status "incomplete" when the limit cut it short, else
"stop" / "completed").  Models starting with "o" add 4 reasoning_tokens (per choice), which are included in
completion_tokens as with the real API.  n (and best_of) multiply the completion tokens.

Per-request control headers: X-Fake-Status (400..599), X-Fake-Latency-Ms, X-Fake-Chunk-Delay-Ms,
X-Fake-Chunks, X-Fake-Usage ("none" or "<prompt>,<completion>[,<total>]"), X-Fake-Cached-Tokens,
X-Fake-Drop: mid-stream, X-Fake-Hang: 1.  A malformed control header is answered with HTTP 400.
A wrong key gets OpenAI's 401 with the presented key masked (first 6 and last 4 characters).
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
