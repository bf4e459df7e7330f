"""The OpenAPI document of the HTTP contract, written out (the ingress routes by hand; see ingress.py)."""

from typing import Any

_ERROR = {
    "description": "JSON error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error", "detail", "request_id"],
                "properties": {
                    "error": {"type": "string"},
                    "detail": {"type": "string"},
                    "request_id": {"type": "string"},
                },
            }
        }
    },
}
_PREDICTION = {
    "type": "object",
    "properties": {
        "request_id": {"type": "string"},
        "sha256": {"type": "string"},
        "model": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
        "predictions": {
            "type": "array",
            "items": {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "number"}}},
        },
    },
}
_TOP_K = {
    "name": "top_k",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    "description": "how many labels to return (default serve.top_k)",
}
_ERRORS = {str(code): _ERROR for code in (400, 401, 408, 413, 415, 422, 503)}
_KEY = [{"apiKey": []}]


# Swagger UI over /openapi.json (its scripts come from the jsDelivr CDN, as FastAPI's do).
DOCS_PAGE = """<!doctype html><html><head><title>lensops</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div><script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"})</script></body></html>"""

ROUTES = {
    "/predict": "POST",
    "/predict/batch": "POST",
    "/healthz": "GET",
    "/model": "GET",
    "/metrics": "GET",
    "/openapi.json": "GET",
    "/docs": "GET",
}
HANDLERS = {  # the ingress's method for each route
    "/predict": "predict",
    "/predict/batch": "predict_batch",
    "/healthz": "healthz",
    "/model": "model_info",
    "/metrics": "metrics_route",
    "/openapi.json": "openapi",
    "/docs": "docs",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_IMAGE_BODY = {
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
    },
}
_FILES_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        }
    },
}
_BATCH = {"type": "object", "properties": {"results": {"type": "array", "items": {"type": "object"}}}}


def _paths() -> dict[str, Any]:
    return {
        "/predict": {
            "post": {
                "summary": "Classify one image (raw body or multipart field `file`)",
                "parameters": [_TOP_K],
                "requestBody": _IMAGE_BODY,
                "security": _KEY,
                "responses": {"200": _json(_PREDICTION, "the top labels"), **_ERRORS},
            }
        },
        "/predict/batch": {
            "post": {
                "summary": "Classify several multipart `file` fields; one result per file",
                "parameters": [_TOP_K],
                "requestBody": _FILES_BODY,
                "security": _KEY,
                "responses": {"200": _json(_BATCH, "one result per file, each with its status"), **_ERRORS},
            }
        },
        "/healthz": {
            "get": {
                "summary": "200 when the model and preprocessing answer within 5 s",
                "responses": {"200": _json({"type": "object"}, "healthy"), "503": _ERROR},
            }
        },
        "/model": {
            "get": {
                "summary": "The served model: name, version, classes, preprocessing spec",
                "security": _KEY,
                "responses": {"200": _json({"type": "object"}, "the served version"), "401": _ERROR},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": _KEY,
                "responses": {"200": {"description": "Prometheus text format"}, "401": _ERROR},
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "lensops",
            "version": "1",
            "description": "Image classification by the registered champion. "
            "Every answer that is not a 200 is JSON: {error, detail, request_id}.",
        },
        "components": {"securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "paths": _paths(),
    }
