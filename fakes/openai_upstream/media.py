"""Payload builders for the images, audio and moderations endpoints (pure functions, deterministic).

Images: gpt-image-* models always answer b64_json and report token usage (input = prompt words +
IMAGE_INPUT_TOKENS per input image; output = per image by quality and size, as OpenAI prices them);
dall-e-* models answer `url` (default) or `b64_json` and report no usage.
Audio: /speech answers a few hundred deterministic bytes; transcriptions of gpt-4o-*transcribe models report
token usage (input = audio tokens (1 per AUDIO_BYTES_PER_TOKEN bytes of file) + prompt words, output =
words of the text); whisper-1 reports duration usage (1 s per AUDIO_BYTES_PER_SECOND bytes, at least 1).
Moderations: a text is flagged for violence when it contains a word of FLAG_WORDS.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import zlib

from fakes.openai_upstream.payloads import JSON, BadRequest, count_words, generate_words

MAX_IMAGES = 10
IMAGE_INPUT_TOKENS = 323
# gpt-image-1 output tokens per image: (square, rectangular) by quality; "auto" is medium here.
IMAGE_OUTPUT_TOKENS: dict[str, tuple[int, int]] = {"low": (272, 408), "medium": (1056, 1584), "high": (4160, 6240)}
IMAGE_URL_BASE = "https://fake-openai-upstream.invalid/images/"
_SIZE = re.compile(r"^\d{2,5}x\d{2,5}$")
RESPONSE_FORMATS = ("url", "b64_json")

SPEECH_FORMATS: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
MAX_SPEECH_INPUT = 4096
AUDIO_BYTES_PER_TOKEN = 100
AUDIO_BYTES_PER_SECOND = 16_000
TRANSCRIPT_WORDS = 16
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")

MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)  # fmt: skip
IMAGE_CATEGORIES = frozenset(
    {"self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence", "violence/graphic"}
)
FLAG_WORDS = frozenset({"kill", "murder", "violence", "violent"})


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x10\x80\xf0\xff")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG_1X1 = _png_1x1()
PNG_1X1_B64 = base64.b64encode(PNG_1X1).decode()


# -- shared helpers ----------------------------------------------------------------------------------------
def form_int(body: JSON, key: str, default: int, minimum: int, maximum: int) -> int:
    """An integer from JSON or from a multipart text field ("2")."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise BadRequest(f"Invalid '{key}': expected an integer in [{minimum}, {maximum}], got {value!r}.", key)
    return value


def optional_str(body: JSON, key: str, default: str) -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"Invalid '{key}': expected a string, got {value!r}.", key)
    return value


def required_str(body: JSON, key: str) -> str:
    value = body.get(key)
    if value is None or value == "":
        raise BadRequest(f"'{key}' is a required property.", key)
    if not isinstance(value, str):
        raise BadRequest(f"Invalid '{key}': expected a string, got {value!r}.", key)
    return value


def is_file(value: object) -> bool:
    return isinstance(value, dict) and "filename" in value and "size" in value


def files(body: JSON, *keys: str) -> list[JSON]:
    """File parts sent under any of `keys` (a repeated field was recorded as a list)."""
    found: list[JSON] = []
    for key in keys:
        value = body.get(key)
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if not is_file(item):
                raise BadRequest(f"Invalid '{key}': expected a file upload (multipart/form-data).", key)
            found.append(item)
    return found


# -- images --------------------------------------------------------------------------------------------------
def is_gpt_image(model: str) -> bool:
    return model.startswith("gpt-image")


def images_response(
    body: JSON,
    created: int,
    image_id: str,
    *,
    default_model: str = "dall-e-2",
    input_images: int = 0,
    forced_usage: tuple[int, int, int | None] | None = None,
    omit_usage: bool = False,
) -> JSON:
    """An ImagesResponse for generations/edits/variations; `body` is the JSON or form already validated
    for its endpoint-specific required fields."""
    model = optional_str(body, "model", default_model)
    n = form_int(body, "n", 1, 1, MAX_IMAGES)
    if model == "dall-e-3" and n != 1:
        raise BadRequest("Invalid 'n': dall-e-3 only supports n=1.", "n")
    size = optional_str(body, "size", "auto" if is_gpt_image(model) else "1024x1024")
    if size != "auto" and not _SIZE.match(size):
        raise BadRequest(f"Invalid 'size': {size!r} is not a supported size.", "size")
    response_format = optional_str(body, "response_format", "url")
    if response_format not in RESPONSE_FORMATS:
        raise BadRequest(f"Invalid 'response_format': expected one of {list(RESPONSE_FORMATS)}.", "response_format")
    prompt = body.get("prompt")
    prompt = prompt if isinstance(prompt, str) else ""
    data: list[JSON] = []
    for index in range(n):
        item: JSON
        if is_gpt_image(model) or response_format == "b64_json":
            item = {"b64_json": PNG_1X1_B64}
        else:
            item = {"url": f"{IMAGE_URL_BASE}{image_id}-{index}.png"}
        if model == "dall-e-3":
            item["revised_prompt"] = prompt
        data.append(item)
    payload: JSON = {"created": created, "data": data}
    if not is_gpt_image(model):
        return payload
    quality = optional_str(body, "quality", "auto")
    resolved_quality = "medium" if quality in ("auto", "standard", "hd") else quality
    if resolved_quality not in IMAGE_OUTPUT_TOKENS:
        raise BadRequest(f"Invalid 'quality': {quality!r}.", "quality")
    resolved_size = "1024x1024" if size == "auto" else size
    width, height = (int(x) for x in resolved_size.split("x"))
    per_image = IMAGE_OUTPUT_TOKENS[resolved_quality][0 if width == height else 1]
    payload.update(
        {
            "background": optional_str(body, "background", "opaque"),
            "output_format": optional_str(body, "output_format", "png"),
            "quality": resolved_quality,
            "size": resolved_size,
        }
    )
    if omit_usage:
        return payload
    text_tokens = count_words(prompt)
    image_tokens = IMAGE_INPUT_TOKENS * input_images
    if forced_usage is not None:
        pt, ct, total = forced_usage
        payload["usage"] = {
            "input_tokens": pt,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": pt},
            "output_tokens": ct,
            "total_tokens": pt + ct if total is None else total,
        }
        return payload
    output_tokens = per_image * n
    payload["usage"] = {
        "input_tokens": text_tokens + image_tokens,
        "input_tokens_details": {"image_tokens": image_tokens, "text_tokens": text_tokens},
        "output_tokens": output_tokens,
        "total_tokens": text_tokens + image_tokens + output_tokens,
    }
    return payload


# -- audio ---------------------------------------------------------------------------------------------------
def speech_audio(body: JSON) -> tuple[bytes, str]:
    """(audio bytes, content type) for POST /v1/audio/speech: a few hundred deterministic bytes."""
    text = required_str(body, "input")
    required_str(body, "model")
    required_str(body, "voice")
    if len(text) > MAX_SPEECH_INPUT:
        raise BadRequest(f"Invalid 'input': string too long, at most {MAX_SPEECH_INPUT} characters.", "input")
    response_format = optional_str(body, "response_format", "mp3")
    content_type = SPEECH_FORMATS.get(response_format)
    if content_type is None:
        raise BadRequest(
            f"Invalid 'response_format': expected one of {list(SPEECH_FORMATS)}.", "response_format"
        )
    size = min(256 + 16 * count_words(text), 4096)
    noise = hashlib.shake_256(text.encode()).digest(size)
    header = {
        "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xf3\x44\xc4",
        "wav": b"RIFF" + struct.pack("<I", size - 8) + b"WAVEfmt ",
        "flac": b"fLaC",
        "opus": b"OggS\x00\x02",
        "aac": b"\xff\xf1\x50\x80",
        "pcm": b"",
    }[response_format]
    return header + noise[len(header) :], content_type


def _segment(text: str, seconds: float) -> JSON:
    return {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": seconds,
        "text": " " + text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": -0.2,
        "compression_ratio": 1.0,
        "no_speech_prob": 0.01,
    }


def is_token_transcriber(model: str) -> bool:
    return model.startswith("gpt-4o") and "transcribe" in model


def transcription(
    body: JSON,
    *,
    task: str,
    words: int | None,
    forced_usage: tuple[int, int, int | None] | None,
    omit_usage: bool,
) -> tuple[JSON | str, str]:
    """(payload, response_format) for transcriptions/translations; str payloads are sent as text/plain."""
    uploads = files(body, "file")
    if not uploads:
        raise BadRequest("'file' is a required property.", "file")
    audio = uploads[0]
    model = required_str(body, "model")
    response_format = optional_str(body, "response_format", "json")
    if response_format not in TRANSCRIPTION_FORMATS:
        raise BadRequest(
            f"Invalid 'response_format': expected one of {list(TRANSCRIPTION_FORMATS)}.", "response_format"
        )
    if is_token_transcriber(model) and response_format not in ("json", "text"):
        raise BadRequest(
            f"response_format '{response_format}' is not compatible with model '{model}', use 'json' or 'text'.",
            "response_format",
        )
    text = " ".join(generate_words(TRANSCRIPT_WORDS if words is None else words))
    size = int(audio["size"])
    seconds = max(1, math.ceil(size / AUDIO_BYTES_PER_SECOND))
    if response_format == "text":
        return text + "\n", response_format
    if response_format in ("srt", "vtt"):
        stamp = f"00:00:00{',' if response_format == 'srt' else '.'}000 --> 00:00:{seconds % 60:02d}"
        stamp += ",000" if response_format == "srt" else ".000"
        head = "1\n" if response_format == "srt" else "WEBVTT\n\n"
        return f"{head}{stamp}\n{text}\n\n", response_format
    payload: JSON = {"text": text}
    if response_format == "verbose_json":
        payload = {
            "task": task,
            "language": "english",
            "duration": float(seconds),
            "text": text,
            "segments": [_segment(text, float(seconds))],
        }
    if task != "transcribe" or omit_usage:
        return payload, response_format
    if is_token_transcriber(model):
        audio_tokens = max(1, math.ceil(size / AUDIO_BYTES_PER_TOKEN))
        prompt = body.get("prompt")
        text_tokens = count_words(prompt) if isinstance(prompt, str) else 0
        input_tokens, output_tokens, total = text_tokens + audio_tokens, count_words(text), None
        if forced_usage is not None:
            input_tokens, output_tokens, total = forced_usage
        payload["usage"] = {
            "type": "tokens",
            "input_tokens": input_tokens,
            "input_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens if total is None else total,
        }
    else:
        payload["usage"] = {"type": "duration", "seconds": seconds}
    return payload, response_format


# -- moderations ---------------------------------------------------------------------------------------------
def _moderation_result(texts: list[str], has_image: bool) -> JSON:
    words = {w.strip(".,!?;:").lower() for text in texts for w in text.split()}
    violent = bool(words & FLAG_WORDS)
    categories = {c: violent and c == "violence" for c in MODERATION_CATEGORIES}
    scores = {c: (0.91 if categories[c] else 1e-5) for c in MODERATION_CATEGORIES}
    applied = {
        c: ["text", "image"] if has_image and c in IMAGE_CATEGORIES else ["text"] for c in MODERATION_CATEGORIES
    }
    return {
        "flagged": violent,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    }


def moderation_response(body: JSON, moderation_id: str) -> JSON:
    """One result per input string; an array of multi-modal parts ({"type": "text"|"image_url"}) is one input."""
    value = body.get("input")
    model = optional_str(body, "model", "omni-moderation-latest")
    results: list[JSON]
    if isinstance(value, str):
        results = [_moderation_result([value], False)]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        results = [_moderation_result([v], False) for v in value]
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        texts: list[str] = []
        has_image = False
        for part in value:
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
                has_image = True
            else:
                raise BadRequest("Invalid 'input': parts must be {'type': 'text'} or {'type': 'image_url'}.", "input")
        results = [_moderation_result(texts, has_image)]
    elif value is None:
        raise BadRequest("'input' is a required property.", "input")
    else:
        raise BadRequest("Invalid 'input': expected a string, an array of strings or of multi-modal parts.", "input")
    return {"id": moderation_id, "model": model, "results": results}
