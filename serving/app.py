"""The Ray Serve application: ingress -> preprocessing -> batched model, following an alias.

Three deployments, scaled independently:

- `Ingress` (FastAPI): the HTTP contract, API key, size limit, timeouts, JSON errors,
  Prometheus metrics, and the production log (one record per successful prediction).
- `Preprocess`: untrusted bytes -> checked, decoded image -> the evaluation tensor, built by the
  shared `data.transforms.eval_transform` from the served version's preprocessing spec.
- `Model`: the exported network of the version an alias points at, behind `@serve.batch`. It
  re-resolves the alias every `serve.alias_poll_seconds`; a new version is loaded beside the old
  one and swapped in atomically, so requests never fail during a switch. Every answer names the
  version that produced it.

Every replica asks for a fraction of a CPU (`serve.replica_cpus`): whole CPUs per replica make
`serve.run` wait forever on a two-core machine.
"""

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from ray import serve

from lensops.settings import PreprocessingSpec

log = logging.getLogger("lensops.serving")


def spec_key(spec: PreprocessingSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


# --- model ------------------------------------------------------------------------------------


@dataclass
class Served:
    version: str
    spec: PreprocessingSpec
    classes: list[str]
    network: Any
    key: str


def _load(tracking_uri: str, uri: str) -> Served:
    import mlflow

    from lensops import registry

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    tail = uri.removeprefix("models:/")
    if "@" in tail:
        name, alias = tail.split("@", 1)
        version = str(client.get_model_version_by_alias(name, alias).version)
        uri = f"models:/{name}/{version}"
    else:
        version = tail.rsplit("/", 1)[1]
    import tempfile
    from pathlib import Path

    from lensops.settings import PreprocessingSpec as Spec

    folder = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="lensops-serve-"))
    )
    spec = Spec.model_validate_json((folder / "extra_files" / "preprocessing.json").read_text())
    import json

    classes = json.loads((folder / "extra_files" / "classes.json").read_text())
    network = registry.load_network(folder)
    return Served(version, spec, classes, network, spec_key(spec))


def _resolve(tracking_uri: str, uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    tail = uri.removeprefix("models:/")
    if "@" not in tail:
        return tail.rsplit("/", 1)[1]
    name, alias = tail.split("@", 1)
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)


@serve.deployment
class Model:
    def __init__(
        self, tracking_uri: str, uri: str, name: str, max_batch_size: int, batch_wait_ms: float, poll_seconds: float
    ):
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.tracking_uri, self.uri, self.name = tracking_uri, uri, name
        self.served = _load(tracking_uri, uri)
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        self._stop = threading.Event()
        self._poll_seconds = poll_seconds
        threading.Thread(target=self._follow_alias, name="follow-alias", daemon=True).start()

    def _follow_alias(self) -> None:
        """Load a moved alias's version beside the current one, then swap the reference."""
        while not self._stop.wait(self._poll_seconds):
            try:
                version = _resolve(self.tracking_uri, self.uri)
                if version != self.served.version:
                    fresh = _load(self.tracking_uri, self.uri)
                    self.served = fresh  # one assignment: a batch sees the old or the new, never a mix
                    log.warning("now serving %s v%s", self.name, fresh.version)
            except Exception as e:  # the registry may be briefly unreachable: keep serving what we have
                log.warning("could not follow %s: %s", self.uri, e)

    def info(self) -> dict[str, Any]:
        s = self.served
        return {
            "name": self.name,
            "version": s.version,
            "classes": s.classes,
            "preprocessing": s.spec.model_dump(),
            "key": s.key,
        }

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def predict(self, items: list[tuple[np.ndarray, str]]) -> list[dict[str, Any]]:
        import torch

        served = self.served  # one version for the whole batch
        ok = [i for i, (_, key) in enumerate(items) if key == served.key]
        answers: list[dict[str, Any]] = [{"stale": True} for _ in items]
        if ok:
            batch = torch.from_numpy(np.stack([items[i][0] for i in ok]))
            with torch.no_grad():
                logits, embedding = served.network(batch)
            probabilities = torch.softmax(logits.float(), dim=1).numpy()
            embedding = embedding.float().numpy()
            for row, i in enumerate(ok):
                answers[i] = {
                    "version": served.version,
                    "probabilities": probabilities[row],
                    "embedding": embedding[row],
                    "classes": served.classes,
                    "batch_size": len(ok),
                }
        return answers

    def __del__(self):
        self._stop.set()


# --- preprocessing ----------------------------------------------------------------------------


@serve.deployment
class Preprocess:
    def __init__(self, allowed_formats: list[str], max_bytes: int, max_pixels: int):
        self.limits = {"allowed_formats": allowed_formats, "max_bytes": max_bytes, "max_pixels": max_pixels}
        self._transforms: dict[str, Any] = {}

    def __call__(self, body: bytes, spec: dict[str, Any]) -> dict[str, Any]:
        from data.transforms import eval_transform, image_stats, to_rgb
        from data.upload import UploadRejected, read_upload

        try:
            upload = read_upload(body, **self.limits)
            rgb = to_rgb(upload.image)
        except UploadRejected as e:
            return {"error": {"status": e.status, "code": e.code, "detail": e.detail}}
        except Exception as e:  # anything else Pillow raises on hostile data is still the client's input
            return {"error": {"status": 422, "code": "undecodable", "detail": f"the image does not decode: {e}"}}
        parsed = PreprocessingSpec.model_validate(spec)
        key = spec_key(parsed)
        if key not in self._transforms:
            self._transforms[key] = eval_transform(parsed)
        return {"tensor": self._transforms[key](rgb).numpy(), "key": key, **image_stats(rgb)}


# --- ingress ----------------------------------------------------------------------------------


api = FastAPI(
    title="lensops",
    description="Image classification by the registered champion. Errors are JSON: {error, detail}.",
    version="1",
)


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ClientError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        self.status, self.code, self.detail = status, code, detail


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        preprocess,
        model,
        *,
        max_body_bytes: int,
        request_timeout_s: float,
        top_k: int,
        log_dir: str,
        flush_seconds: float,
        flush_records: int,
        api_key: str | None,
    ):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from lensops.production_log import ProductionLogWriter

        self.preprocess, self.model = preprocess, model
        self.max_body_bytes, self.timeout, self.top_k, self.api_key = max_body_bytes, request_timeout_s, top_k, api_key
        self.log = ProductionLogWriter(log_dir, flush_seconds=flush_seconds, flush_records=flush_records)
        self._info: dict[str, Any] | None = None
        self._info_at = 0.0
        self.metrics = CollectorRegistry()
        self.requests = Counter("lensops_requests", "HTTP requests", ["route", "status"], registry=self.metrics)
        self.latency = Histogram("lensops_request_seconds", "request latency", ["route"], registry=self.metrics)
        self.batch_sizes = Histogram(
            "lensops_model_batch_size", "requests per model batch", buckets=BATCH_BUCKETS, registry=self.metrics
        )
        self.served_version = Gauge(
            "lensops_model_version", "model version that answered last", ["name"], registry=self.metrics
        )
        self._install_handlers()

    def _install_handlers(self) -> None:
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse

        async def client_error(request, exc: ClientError):
            return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status)

        async def bad_parameter(request, exc: RequestValidationError):
            detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            return JSONResponse({"error": "bad_parameter", "detail": detail}, status_code=400)

        api.add_exception_handler(ClientError, client_error)
        api.add_exception_handler(RequestValidationError, bad_parameter)

    def _authorise(self, request) -> None:
        if self.api_key and request.headers.get("x-api-key") != self.api_key:
            raise ClientError(401, "unauthorised", "send the API key in the X-API-Key header")

    async def _body(self, request) -> list[tuple[str, bytes]]:
        """The image(s) of a request: the raw body, or multipart `file` field(s)."""
        length = request.headers.get("content-length", "")
        content_type = request.headers.get("content-type", "")
        multipart = content_type.startswith("multipart/form-data")
        limit = self.max_body_bytes * (16 if multipart else 1)  # several files, each checked below
        if length.isdigit() and int(length) > limit:
            raise ClientError(413, "too_large", f"the request is {int(length):,} bytes; the limit is {limit:,}")
        if multipart:
            form = await request.form()
            files = [
                (getattr(f, "filename", "") or f"file{i}", await f.read())
                for i, f in enumerate(form.getlist("file"))
                if hasattr(f, "read")
            ]
            if not files:
                raise ClientError(400, "bad_parameter", "multipart requests carry the image in a field named `file`")
            return files
        return [("body", await request.body())]

    async def _predict_one(self, body: bytes, top_k: int) -> dict[str, Any]:
        if len(body) > self.max_body_bytes:
            raise ClientError(
                413, "too_large", f"the image is {len(body):,} bytes; the limit is {self.max_body_bytes:,}"
            )
        for attempt in range(3):  # a version switch between preprocessing and the model: redo with the new spec
            info = await self._model_info(refresh=attempt > 0)
            prepared = await self.preprocess.remote(body, info["preprocessing"])
            if "error" in prepared:
                e = prepared["error"]
                raise ClientError(e["status"], e["code"], e["detail"])
            answer = await self.model.predict.remote((prepared["tensor"], prepared["key"]))
            if not answer.get("stale"):
                break
        else:
            raise ClientError(503, "model_switching", "the served model is being replaced; retry")
        probabilities, classes = answer["probabilities"], answer["classes"]
        order = np.argsort(-probabilities)[:top_k]
        request_id = uuid.uuid4().hex
        predictions = [{"label": classes[i], "score": float(probabilities[i])} for i in order]
        self.log.append(
            {
                "request_id": request_id,
                "model_name": info["name"],
                "model_version": answer["version"],
                "embedding": answer["embedding"],
                "label": predictions[0]["label"],
                "score": predictions[0]["score"],
                "width": prepared["width"],
                "height": prepared["height"],
                "brightness": prepared["brightness"],
                "contrast": prepared["contrast"],
            }
        )
        self.served_version.labels(info["name"]).set(float(answer["version"]))
        self.batch_sizes.observe(answer["batch_size"])
        return {
            "request_id": request_id,
            "model": {"name": info["name"], "version": answer["version"]},
            "predictions": predictions,
        }

    async def _model_info(self, refresh: bool = False) -> dict[str, Any]:
        """The served version's spec, cached: a stale cache only costs one retry (the model says so)."""
        if refresh or self._info is None or time.monotonic() - self._info_at > 1.0:
            self._info = await self.model.info.remote()
            self._info_at = time.monotonic()
        return self._info

    async def _timed(self, route: str, work) -> Any:
        from fastapi.responses import JSONResponse

        started = time.perf_counter()
        status = 200
        try:
            return await asyncio.wait_for(work, timeout=self.timeout)
        except TimeoutError:
            status = 408
            return JSONResponse({"error": "timeout", "detail": f"no answer within {self.timeout:g} s"}, status_code=408)
        except ClientError as e:
            status = e.status
            return JSONResponse({"error": e.code, "detail": e.detail}, status_code=e.status)
        finally:
            self.requests.labels(route, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - started)

    @api.post("/predict", summary="Classify one image (raw body or multipart field `file`)")
    async def predict(self, request: Request, top_k: int | None = Query(None, ge=1, le=1000)):
        self._authorise(request)

        async def work():
            (_, body), *rest = await self._body(request)
            if rest:
                raise ClientError(
                    400, "bad_parameter", "one image per /predict request; use /predict/batch for several"
                )
            return await self._predict_one(body, top_k or self.top_k)

        return await self._timed("/predict", work())

    @api.post("/predict/batch", summary="Classify several multipart `file` fields; one answer per file")
    async def predict_batch(self, request: Request, top_k: int | None = Query(None, ge=1, le=1000)):
        self._authorise(request)

        async def one(name: str, body: bytes) -> dict[str, Any]:
            try:
                return {"file": name, "status": 200, **(await self._predict_one(body, top_k or self.top_k))}
            except ClientError as e:
                return {"file": name, "status": e.status, "error": e.code, "detail": e.detail}

        async def work():
            files = await self._body(request)
            return {"results": list(await asyncio.gather(*(one(n, b) for n, b in files)))}

        return await self._timed("/predict/batch", work())

    @api.get("/healthz", summary="200 when the model is loaded")
    async def healthz(self):
        info = await self.model.info.remote()
        return {"status": "ok", "model": {"name": info["name"], "version": info["version"]}}

    @api.get("/model", summary="The served model: name, version, classes, preprocessing spec")
    async def model_info(self, request: Request):
        self._authorise(request)
        info = await self.model.info.remote()
        return {k: v for k, v in info.items() if k != "key"}

    @api.get("/metrics", summary="Prometheus metrics")
    async def metrics_route(self, request: Request):
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self._authorise(request)
        return Response(generate_latest(self.metrics), media_type=CONTENT_TYPE_LATEST)

    def __del__(self):
        self.log.close()  # a clean shutdown loses no production-log record


# --- building the application ---------------------------------------------------------------


def build_app(settings, model_ref: str | None = None, *, api_key: str | None = None):
    """The bound application for `serve.run`, sized from `settings.serve`."""
    import os

    from lensops import registry
    from lensops.settings import tracking_uri

    s = settings.serve
    uri = registry.resolve(settings, model_ref or s.model, alias=registry.CHAMPION)
    cpus = {"num_cpus": s.replica_cpus}
    # Enough requests in flight per replica for batches to fill (Serve's default allows 5).
    preprocess = Preprocess.options(
        num_replicas=s.preprocess_replicas, ray_actor_options=cpus, max_ongoing_requests=s.max_ongoing_requests
    ).bind(s.allowed_formats, s.max_body_bytes, s.max_pixels)
    model = Model.options(
        num_replicas=s.model_replicas, ray_actor_options=cpus, max_ongoing_requests=max(2 * s.max_batch_size, 8)
    ).bind(
        tracking_uri(settings.root),
        uri,
        settings.registry.model_name,
        s.max_batch_size,
        s.batch_wait_ms,
        s.alias_poll_seconds,
    )
    return Ingress.options(
        ray_actor_options=cpus, max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests
    ).bind(
        preprocess,
        model,
        max_body_bytes=s.max_body_bytes,
        request_timeout_s=s.request_timeout_s,
        top_k=s.top_k,
        log_dir=str(settings.path(settings.monitoring.log_dir)),
        flush_seconds=settings.monitoring.flush_seconds,
        flush_records=settings.monitoring.flush_records,
        api_key=api_key if api_key is not None else os.environ.get("LENSOPS_API_KEY") or None,
    )


def app_builder(args: dict[str, str]):
    """For `serve run serving/config.yaml`: args `params` (default params.yaml) and `model`."""
    from lensops.settings import load_settings

    return build_app(load_settings(args.get("params", "params.yaml")), args.get("model"))
