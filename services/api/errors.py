"""Every error the API returns is JSON: ``{"error": {"status": int, "message": str, ...}}``.

Views raise :class:`ApiError` (or let a known domain error escape); Werkzeug's HTTP errors
(404 unknown URL, 405, 413 body too large, ...) and anything unexpected (500) go through the same
handlers, so no route ever answers with an HTML page.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from kombu.exceptions import OperationalError as BrokerUnavailable
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from services.api.forms import FormLimitExceeded
from services.encoder.imaging import DecodeBusy
from services.graph.store import TRANSIENT_NEO4J_ERRORS
from services.retrieval.contract import (
    FindingsUnavailable,
    GraphNotReady,
    QueryEmbeddingError,
    UnknownImage,
)

logger = logging.getLogger(__name__)

HANDLED_STATUSES = (400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503)


class ApiError(Exception):
    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def error_response(status: int, message: str, **details: Any) -> Response:
    body: dict[str, Any] = {"status": status, "message": message}
    body.update({name: value for name, value in details.items() if value is not None})
    response = jsonify({"error": body})
    response.status_code = status
    return response


# An error names at most this many problems, each field name cut to FIELD_NAME_SHOWN
# characters: 5,000 unknown form fields made a 498 KB answer (issue 26).
PROBLEMS_SHOWN = 10
FIELD_NAME_SHOWN = 64


def _shown_field(problem: dict[str, Any]) -> str:
    name = ".".join(str(part) for part in problem["loc"]) or "(body)"
    return name if len(name) <= FIELD_NAME_SHOWN else name[:FIELD_NAME_SHOWN] + "…"


def validation_problems(error: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": _shown_field(problem), "problem": problem["msg"]}
        for problem in error.errors(include_url=False)[:PROBLEMS_SHOWN]
    ]


def validation_message(error: ValidationError) -> str:
    message = "; ".join(f"{p['field']}: {p['problem']}" for p in validation_problems(error))
    hidden = error.error_count() - PROBLEMS_SHOWN
    return f"{message}; and {hidden} more problem(s)" if hidden > 0 else message


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.message, **error.details)

    @app.errorhandler(ValidationError)
    def _validation(error: ValidationError) -> Response:
        return error_response(
            422,
            f"invalid request: {validation_message(error)}",
            problems=validation_problems(error),
        )

    @app.errorhandler(UnknownImage)
    def _unknown_image(error: UnknownImage) -> Response:
        return error_response(404, str(error))

    @app.errorhandler(QueryEmbeddingError)
    def _bad_embedding(error: QueryEmbeddingError) -> Response:
        return error_response(422, str(error))

    @app.errorhandler(GraphNotReady)
    def _not_ready(error: GraphNotReady) -> Response:
        return error_response(409, str(error))

    @app.errorhandler(FindingsUnavailable)
    def _no_findings(error: FindingsUnavailable) -> Response:
        return error_response(409, str(error))

    @app.errorhandler(DecodeBusy)
    def _decode_busy(error: DecodeBusy) -> Response:
        response = error_response(503, f"the server is busy decoding images ({error}); retry")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(error: RequestEntityTooLarge) -> Response:
        if isinstance(error, FormLimitExceeded):
            return error_response(413, error.description or "the form is too large")
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return error_response(
            413, f"the request body is larger than the limit of {limit} bytes", limit_bytes=limit
        )

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        status = error.code or 500
        message = error.description or error.name
        response = error_response(status, message)
        allowed = getattr(error, "valid_methods", None)
        if status == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    for transient in TRANSIENT_NEO4J_ERRORS:

        @app.errorhandler(transient)
        def _unavailable(error: Exception) -> Response:
            logger.warning("graph database unavailable: %s", error)
            return error_response(503, "the graph database is unavailable; retry shortly")

    # kombu wraps the broker's connection errors when a job is enqueued (POST /jobs/...).
    for redis_error in (RedisConnectionError, RedisTimeoutError, BrokerUnavailable):

        @app.errorhandler(redis_error)
        def _queue_unavailable(error: Exception) -> Response:
            logger.warning("Redis unavailable: %s", error)
            return error_response(503, "the job queue (Redis) is unavailable; retry shortly")

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(500, "internal error; the server log has the details")
