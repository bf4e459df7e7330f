"""The HTTP ingress: the contract, the API key, limits, timeouts, JSON errors, metrics, the log.

A plain Ray Serve deployment whose `__call__` takes Starlette's `Request` and routes by hand:
FastAPI's per-request machinery cost more CPU per request than all of a small model's image
work. The OpenAPI document is written out in `serving.openapi`; the HTTP edges (capped bodies,
JSON errors with a request id, the key, parameters) are in `serving.http`. Every answer is
counted in /metrics by route and status.

Each /predict upload is preprocessed on its own (one call to a preprocessing replica), so an
upload whose decode runs to its deadline holds up no other request; the preprocessed images are
gathered with `@serve.batch` and go to the model together, one call per batch. The batching
adapts: a batch closes once every image admitted has joined it, so a lone request never waits out
`serve.batch_wait_ms`. A /predict/batch's images are a batch already and go to the model without
that wait (benchmarks/README.md: what a request costs). A canary answers its share of requests
(`serving.canary`); a shadow runs after the answers (`serving.shadow`).

Admission counts images, not requests: a `/predict/batch` of 32 files takes 32 of
`serve.max_images_in_flight`. Every 200 answer goes to `lensops.core.capture.AnswerLog`: a
production-log record with the image's sha256, and for the images the capture policy picks, the
bytes as received in the capture store, written off the answer's path before the record that
points to them. Neither ever fails or delays an answer; their failures are counted in /metrics.
"""

import asyncio
import hashlib
import logging
import time
import uuid
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .answers import IMAGE_STATS, reply
from .http import ClientError, authorised, error_response, int_parameter, read_images, request_id
from .openapi import DOCS_PAGE, HANDLERS, ROUTES

log = logging.getLogger("lensops.serving")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@serve.deployment
class Ingress:
    def __init__(
        self,
        preprocess,
        model,
        *,
        max_body_bytes: int,
        request_timeout_s: float,
        top_k: int,
        monitoring,
        root: str,
        api_key: str | None,
        max_batch_size: int,
        batch_wait_ms: float,
        max_batch_files: int = 64,
        max_images_in_flight: int = 128,
        preprocess_chunk: int = 32,
        shadow=None,
        shadow_fraction: float = 1.0,
        canary=None,
        canary_settings=None,
    ):
        from pathlib import Path

        from data.novelty import outside
        from lensops.core.capture import AnswerLog

        self.preprocess, self.model, self.preprocess_chunk = preprocess, model, preprocess_chunk
        self.max_batch_size = max_batch_size
        self.in_batch = 0  # images inside a running batch (the rest of those in flight are coming)
        self._answer.set_max_batch_size(max_batch_size)
        self._answer.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        self.max_body_bytes, self.timeout, self.top_k, self.api_key = max_body_bytes, request_timeout_s, top_k, api_key
        self.max_batch_files, self.max_images_in_flight, self.images_in_flight = (
            max_batch_files,
            max_images_in_flight,
            0,
        )
        self.answers = AnswerLog(monitoring, Path(root))
        self.outside = outside  # whether an image statistic is outside the training range
        self._info: dict[str, Any] | None = None
        self._info_at = 0.0
        self._metrics()
        self.shadow = self._shadow(shadow, shadow_fraction, monitoring, Path(root)) if shadow is not None else None
        self.canary = self._canary(canary, canary_settings) if canary is not None else None
        self.routes = {path: getattr(self, name) for path, name in HANDLERS.items()}

    def _metrics(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from lensops.core.capture import AnswerLogCollector

        self.metrics = CollectorRegistry()
        self.requests = Counter("lensops_requests", "HTTP requests", ["route", "status"], registry=self.metrics)
        self.latency = Histogram("lensops_request_seconds", "request latency", ["route"], registry=self.metrics)
        self.batch_sizes = Histogram(
            "lensops_model_batch_size", "requests per model batch", buckets=BATCH_BUCKETS, registry=self.metrics
        )
        self.served_version = Gauge(
            "lensops_model_version", "model version that answered last", ["name"], registry=self.metrics
        )
        in_flight = Gauge("lensops_images_in_flight", "images admitted and not yet answered", registry=self.metrics)
        in_flight.set_function(lambda: self.images_in_flight)
        self.metrics.register(AnswerLogCollector(self.answers))

    def _shadow(self, model, fraction: float, monitoring, root):
        from .shadow import Shadow

        log_dir = root / monitoring.shadow_log_dir
        return Shadow(model, self._preprocessed, fraction=fraction, log_dir=log_dir, monitoring=monitoring,
                      metrics=self.metrics, stats=IMAGE_STATS)  # fmt: skip

    def _canary(self, model, cfg):
        from .canary import Canary

        return Canary(model, cfg, self.metrics)

    async def __call__(self, request: Request) -> Response:
        """Route, answer, count. A client error is its JSON 4xx; anything else a JSON 500 naming the request."""
        started, path = time.perf_counter(), request.url.path
        route = path if path in ROUTES else "other"
        try:
            if route == "other":
                raise ClientError(404, "not_found", f"no route {path[:200]}; routes: {', '.join(ROUTES)}")
            if request.method != ROUTES[path]:
                raise ClientError(405, "method_not_allowed", f"{path} takes {ROUTES[path]}, not {request.method}")
            response = await self.routes[path](request)
        except ClientError as e:
            response = error_response(request, e.status, e.code, e.detail)
        except Exception as e:  # never a traceback to the client; the log names the request
            rid = request_id(request)
            log.exception("request %s failed: %s: %s", rid, type(e).__name__, e)
            response = error_response(request, 500, "internal_error", f"an internal error; the log names request {rid}")
        self.requests.labels(route, str(response.status_code)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)
        return response

    def _admit(self, n: int) -> None:
        """Count `n` images against admission: past `max_images_in_flight`, a 503 at once."""
        if self.images_in_flight + n > self.max_images_in_flight:
            detail = f"{self.images_in_flight} images are being answered; the limit is {self.max_images_in_flight}"
            raise ClientError(503, "overloaded", detail + "; retry shortly")
        self.images_in_flight += n

    async def _predict_one(self, body: bytes, top_k: int, request_id: str, arm=None) -> dict[str, Any]:
        """One image's answer; `arm` is the canary's info when the canary answers it (`serving.canary`)."""
        if len(body) > self.max_body_bytes:
            raise ClientError(
                413, "too_large", f"the image is {len(body):,} bytes; the limit is {self.max_body_bytes:,}"
            )
        meta = {"request_id": request_id, "sha256": hashlib.sha256(body).hexdigest()}
        started = time.perf_counter()
        answer = await self._batched(body, None, meta, arm)
        return self._reply(body, answer, top_k, meta, time.perf_counter() - started)

    def _reply(self, body: bytes, answer: dict[str, Any], top_k: int, meta: dict[str, str], seconds: float) -> dict:
        """The client's JSON for one answered image, its production-log record written (and the
        image captured if the policy picks it); a client error is raised."""
        if "error" in answer:
            raise ClientError(**answer["error"])
        if self.canary is not None:
            self.canary.observe(answer["version"], answer["side"], True, seconds)
        client, record = reply(answer, top_k, meta)
        novelty = float(answer["novelty"])
        stats = {stat: answer[stat] for stat in IMAGE_STATS}
        outlier = self.outside(stats, answer["stat_ranges"])
        self.answers.record(body, record, novelty=None if np.isnan(novelty) else novelty, stat_outlier=outlier)
        self.served_version.labels(answer["name"]).set(float(answer["version"]))
        return client

    async def _batched(self, body: bytes, item: dict[str, Any] | None, meta: dict[str, str], arm=None) -> dict:
        """Preprocessed alone, so that a slow upload (a decode running to its deadline) holds up no
        other request; then into the next model batch, which closes once it holds every image
        admitted and not yet in a batch (or is full, or `serve.batch_wait_ms` passed)."""
        if item is None:
            info = arm or await self._model_info()
            (item,) = await self.preprocess.remote([body], info["preprocessing"])
        if "error" in item:
            return item
        coming = self.images_in_flight - self.in_batch
        if arm is not None:  # the canary answers, or fails and the champion answers instead
            started = time.perf_counter()
            self._answer_canary.set_max_batch_size(max(1, min(self.max_batch_size, coming)))
            answer = await self._answer_canary((body, item, meta))
            if "failed" not in answer:
                return answer
            self.canary.observe(arm["version"], "canary", False, time.perf_counter() - started)
            return await self._batched(body, None if item["key"] != (await self._model_info())["key"] else item, meta)
        self._answer.set_max_batch_size(max(1, min(self.max_batch_size, coming)))
        return await self._answer((body, item, meta))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _answer(self, items: list[tuple[bytes, dict[str, Any], dict[str, str]]]) -> list[dict[str, Any]]:
        """Preprocessed images predicted together: one call to the model per batch.

        Returns, per image, the model's answer with the image stats, or `{"error": ...}` for one
        the client must fix. One bad image never fails the others of its batch.
        """
        self.in_batch += len(items)
        try:
            return await self._predict_batch(items)
        finally:
            self.in_batch -= len(items)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _answer_canary(self, items: list[tuple[bytes, dict[str, Any], dict[str, str]]]) -> list[dict[str, Any]]:
        """The canary's batches: a failure of the canary is `{"failed": ...}` for each image, never an error."""
        self.in_batch += len(items)
        try:
            return await self._predict_batch(items, canary=True)
        except Exception as e:
            log.warning("canary failed on %d image(s): %s: %s", len(items), type(e).__name__, str(e)[:300])
            return [{"failed": type(e).__name__} for _ in items]
        finally:
            self.in_batch -= len(items)

    async def _predict_batch(self, items: list[tuple[bytes, dict[str, Any], dict[str, str]]], canary: bool = False):
        """The model's answers for a batch. Images preprocessed with another version's spec (the
        alias moved meanwhile) are preprocessed again with the served one's. The shadow, if any,
        gets the batch once it is answered (`serving.shadow`)."""
        bodies, prepared = [body for body, _, _ in items], [item for _, item, _ in items]
        answers: list[dict[str, Any]] = [{} for _ in bodies]
        pending = list(range(len(bodies)))
        model = self.canary.model if canary else self.model
        for attempt in range(4):
            info = await (self.canary.info(attempt > 0) if canary else self._model_info(refresh=attempt > 0))
            if info is None:
                raise RuntimeError("the canary stopped")
            if attempt:
                again = await self._preprocessed([bodies[i] for i in pending], info["preprocessing"])
                for i, item in zip(pending, again, strict=True):
                    prepared[i] = item
            for i in pending:
                if "error" in prepared[i]:
                    answers[i] = prepared[i]
            ready = [(i, prepared[i]) for i in pending if "error" not in prepared[i]]
            if not ready:
                return answers
            key = ready[0][1]["key"]
            later = [i for i, item in ready if item["key"] != key]
            ready = [(i, item) for i, item in ready if item["key"] == key]
            tensors = np.stack([item["tensor"] for _, item in ready])
            result = await model.predict.remote((tensors, key))
            if result.get("stale"):
                pending = [i for i, _ in ready] + later
                continue
            if self.shadow is not None and not canary:
                self.shadow.submit(tensors, key, [(items[i][2], bodies[i], item) for i, item in ready])
            self.batch_sizes.observe(result["batch_size"])
            for row, (i, item) in enumerate(ready):
                answers[i] = {
                    "name": info["name"],
                    "version": result["version"],
                    "classes": result["classes"],
                    "probabilities": result["probabilities"][row],
                    "embedding": result["embedding"][row],
                    "novelty": result["novelty"][row],
                    "stat_ranges": info.get("stat_ranges") or {},
                    "side": "canary" if canary else "champion",
                    **{stat: item[stat] for stat in IMAGE_STATS},
                }
            if not later:
                return answers
            pending = later
        switching = {"status": 503, "code": "model_switching", "detail": "the served model is being replaced; retry"}
        for i in pending:
            answers[i] = {"error": switching}
        return answers

    async def _preprocessed(self, bodies: list[bytes], spec: dict[str, Any]) -> list[dict[str, Any]]:
        """The batch in chunks, so that several (or autoscaled) preprocessing replicas share it; in order."""
        size = self.preprocess_chunk
        chunks = [bodies[i : i + size] for i in range(0, len(bodies), size)]
        parts = await asyncio.gather(*(self.preprocess.remote(chunk, spec) for chunk in chunks))
        return [item for part in parts for item in part]

    async def _model_info(self, refresh: bool = False) -> dict[str, Any]:
        """The served version's spec, cached: a stale cache only costs one retry (the model says so)."""
        if refresh or self._info is None or time.monotonic() - self._info_at > 1.0:
            self._info = await self.model.info.remote()
            self._info_at = time.monotonic()
        return self._info

    async def _timed(self, request, work) -> Response:
        """The route's work under `serve.request_timeout_s` (408 past it), as a JSON answer."""
        try:
            return JSONResponse(await asyncio.wait_for(work, timeout=self.timeout))
        except TimeoutError:
            return error_response(request, 408, "timeout", f"no answer within {self.timeout:g} s")

    async def predict(self, request: Request) -> Response:
        """Classify one image (raw body or multipart field `file`); `?top_k=N`."""
        authorised(request, self.api_key)
        top_k = int_parameter(request, "top_k", self.top_k, 1, 1000)

        async def work():
            self._admit(1)
            try:
                (_, body), *rest = await read_images(request, self.max_body_bytes, 1)
                if rest:
                    detail = "one image per /predict request; use /predict/batch for several"
                    raise ClientError(400, "bad_parameter", detail)
                arm = await self.canary.choose(request.headers) if self.canary else None
                return await self._predict_one(body, top_k, request_id(request), arm=arm)
            finally:
                self.images_in_flight -= 1

        return await self._timed(request, work())

    async def predict_batch(self, request: Request) -> Response:
        """Classify several multipart `file` fields; one answer per file."""
        authorised(request, self.api_key)
        top_k = int_parameter(request, "top_k", self.top_k, 1, 1000)

        arm = await self.canary.choose(request.headers) if self.canary else None  # one version per request

        async def work():
            files = await read_images(request, self.max_body_bytes, self.max_batch_files)
            self._admit(len(files))
            self.in_batch += len(files)  # a batch of their own: a /predict's batch never waits for them
            try:
                bodies = [body for _, body in files]
                metas = [{"request_id": uuid.uuid4().hex, "sha256": hashlib.sha256(b).hexdigest()} for b in bodies]
                started = time.perf_counter()
                answers = await self._together(bodies, metas, arm)
                seconds, results = time.perf_counter() - started, []
                for (name, body), meta, answer in zip(files, metas, answers, strict=True):
                    try:
                        results.append({"file": name, "status": 200, **self._reply(body, answer, top_k, meta, seconds)})
                    except ClientError as e:
                        results.append({"file": name, "status": e.status, "error": e.code, "detail": e.detail})
                return {"results": results}
            finally:
                self.images_in_flight -= len(files)
                self.in_batch -= len(files)

        return await self._timed(request, work())

    async def _together(self, bodies: list[bytes], metas: list[dict[str, str]], arm) -> list[dict[str, Any]]:
        """A /predict/batch's images are a batch already: preprocessed together (a share per
        replica), then to the model in chunks of `serve.max_batch_size`, without waiting in the
        ingress's batch. The model still merges the chunks of concurrent requests."""
        info = arm or await self._model_info()
        prepared = await self._preprocessed(bodies, info["preprocessing"])
        items = list(zip(bodies, prepared, metas, strict=True))
        size = self.max_batch_size
        parts = await asyncio.gather(*(self._chunk(items[i : i + size], arm) for i in range(0, len(items), size)))
        return [answer for part in parts for answer in part]

    async def _chunk(self, items: list[tuple[bytes, dict[str, Any], dict[str, str]]], arm) -> list[dict[str, Any]]:
        if arm is not None:  # the canary answers, or fails and the champion answers instead
            started = time.perf_counter()
            try:
                return await self._predict_batch(items, canary=True)
            except Exception as e:
                log.warning("canary failed on %d image(s): %s: %s", len(items), type(e).__name__, str(e)[:300])
                for _ in items:
                    self.canary.observe(arm["version"], "canary", False, time.perf_counter() - started)
        return await self._predict_batch(items)  # an image preprocessed for the canary's spec is done again

    async def healthz(self, request: Request) -> Response:
        """200 when the model and preprocessing deployments answer within 5 s; a JSON 503 otherwise."""
        try:
            info, _ = await asyncio.wait_for(
                asyncio.gather(self.model.info.remote(), self.preprocess.healthy.remote()), timeout=5
            )
        except Exception as e:  # a deployment that does not answer (or fails) makes the server unhealthy
            detail = f"a deployment did not answer: {type(e).__name__}: {e}"[:300]
            return error_response(request, 503, "unhealthy", detail)
        return JSONResponse({"status": "ok", "model": {"name": info["name"], "version": info["version"]}})

    async def model_info(self, request: Request) -> Response:
        authorised(request, self.api_key)
        info = await self.model.info.remote()
        return JSONResponse({k: v for k, v in info.items() if k != "key"})

    async def metrics_route(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        authorised(request, self.api_key)
        return Response(generate_latest(self.metrics), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        from .openapi import openapi_document

        authorised(request, self.api_key)
        return JSONResponse(openapi_document())

    async def docs(self, request: Request) -> Response:
        authorised(request, self.api_key)
        return HTMLResponse(DOCS_PAGE)

    def __del__(self):
        self.answers.close()  # a clean shutdown loses no production-log record and no queued capture
        if self.shadow is not None:
            self.shadow.close()
