"""The HTTP edges of the ingress: bodies read under a byte cap, JSON errors, the key, the counts.

- **Bodies** are read from the stream and counted as they arrive: past the limit the request is
  answered 413 at once, with or without a `Content-Length`, and never more than the limit is
  held. Multipart bodies go through Starlette's parser on the same capped stream, with a limit on
  the number of files.
- **Every answer that is not a 200 is JSON** `{"error", "detail", "request_id"}`: client errors,
  unknown routes (404), wrong methods (405), malformed multipart (400), bad parameters (400) and
  an internal error (500, which names the request id and never shows a traceback).
- **Every request is counted** by route and status in `/metrics` (401s, 404s and 500s too). The
  `request_id` of an answer is the one Ray Serve's proxy sends back as `X-Request-ID`.
- **The key** is compared in constant time (`hmac.compare_digest`).
"""

import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("lensops.serving")

KNOWN_ROUTES = ("/predict", "/predict/batch", "/healthz", "/model", "/metrics", "/docs", "/openapi.json")
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large"}


class ClientError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        self.status, self.code, self.detail = status, code, detail


def request_id(request: Request) -> str:
    """The id Ray Serve gave the request (its proxy returns it as `X-Request-ID`), else a new one."""
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


def install(api: FastAPI, requests_counter, latency) -> None:
    """JSON for every error, and one count per request by route and status."""

    async def client_error(request: Request, exc: ClientError):
        return error_response(request, exc.status, exc.code, exc.detail)

    async def bad_parameter(request: Request, exc: RequestValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(request, 400, "bad_parameter", detail)

    async def http_error(request: Request, exc: HTTPException):
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(request, exc.status_code, code, str(exc.detail))

    async def internal_error(request: Request, exc: Exception):
        rid = request_id(request)
        log.error("request %s failed: %s: %s", rid, type(exc).__name__, exc, exc_info=exc)
        detail = f"an internal error; the server's log names request {rid}"
        return error_response(request, 500, "internal_error", detail)

    api.add_exception_handler(ClientError, client_error)
    api.add_exception_handler(RequestValidationError, bad_parameter)
    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(Exception, internal_error)

    async def counted(request: Request, call_next):
        started = time.perf_counter()
        request_id(request)
        route = request.url.path if request.url.path in KNOWN_ROUTES else "other"
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            requests_counter.labels(route, str(status)).inc()
            latency.labels(route).observe(time.perf_counter() - started)

    api.middleware("http")(counted)
