"""The HTTP edges of the ingress: bodies read under a byte cap, JSON errors, the key, parameters.

- **Bodies** are read from the stream and counted as they arrive: past the limit the request is
  answered 413 at once, with or without a `Content-Length`, and never more than the limit is
  held. Multipart bodies go through Starlette's parser on the same capped stream, with a limit on
  the number of files.
- **Every answer that is not a 200 is JSON** `{"error", "detail", "request_id"}` (`error_response`).
  The `request_id` is the one Ray Serve sends back as `X-Request-ID`.
- **The key** is compared in constant time (`hmac.compare_digest`).
"""

import hmac
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse


class ClientError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        self.status, self.code, self.detail = status, code, detail


def request_id(request: Request) -> str:
    """The id Ray Serve gave the request (it returns it as `X-Request-ID`), else a new one."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        try:
            from ray.serve.context import _get_serve_request_context

            rid = _get_serve_request_context().request_id
        except Exception:  # outside a Serve request (a plain ASGI test client)
            rid = None
        rid = request.state.request_id = rid or uuid.uuid4().hex
    return rid


def error_response(request: Request, status: int, code: str, detail: str) -> JSONResponse:
    rid = request_id(request)
    return JSONResponse({"error": code, "detail": detail, "request_id": rid}, status_code=status)


def authorised(request: Request, api_key: str | None) -> None:
    """Raise 401 unless the request carries the key (constant-time comparison)."""
    if not api_key:
        return
    given = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise ClientError(401, "unauthorised", "send the API key in the X-API-Key header")


async def capped_stream(request: Request, limit: int, what: str) -> AsyncIterator[bytes]:
    """The request body as it arrives; a 413 as soon as it passes `limit` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ClientError(413, "too_large", f"the {what} is {int(length):,} bytes; the limit is {limit:,}")
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ClientError(413, "too_large", f"the {what} is over the limit of {limit:,} bytes (stopped reading)")
        yield chunk


async def read_images(request: Request, max_bytes: int, max_files: int) -> list[tuple[str, bytes]]:
    """The image(s) of a request: the raw body, or multipart `file` field(s), read under the caps."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return [("body", b"".join([chunk async for chunk in capped_stream(request, max_bytes, "image")]))]
    stream = capped_stream(request, max_bytes * max_files, "request")
    parser = MultiPartParser(
        request.headers, stream, max_files=max_files, max_fields=max_files, max_part_size=max_bytes
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ClientError(400, "bad_multipart", f"the multipart body does not parse: {e.message}") from None
    try:
        files = [(getattr(f, "filename", "") or f"file{i}", await f.read()) for i, f in enumerate(form.getlist("file"))
                 if hasattr(f, "read")]  # fmt: skip
    finally:
        await form.close()
    if not files:
        raise ClientError(400, "bad_parameter", "multipart requests carry the image in a field named `file`")
    return files


def int_parameter(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A query parameter that must be an integer in [low, high]; 400 naming it otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ClientError(400, "bad_parameter", f"{name}: must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ClientError(400, "bad_parameter", f"{name}: must be between {low} and {high}, got {value}")
    return value
