"""Acceptance 4 (fuzzing): schemathesis generates requests from the served OpenAPI document for
every operation, valid (positive) and invalid (negative), with a valid API key and without any
key, against the real app on the real Neo4j; no answer may be a server error, and every error
answer is the API's JSON error body.

Bounded: ``EXAMPLES`` per operation and mode, derandomised (the same cases on every run).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.reliability.conftest import SeededGraph, identifying_names
from workers.celery_app import app

pytestmark = [pytest.mark.neo4j, pytest.mark.redis, pytest.mark.slow]

OPENAPI_PATH = "/api/v1/openapi.json"
EXAMPLES = 12
# Operations whose cost is a fixed wait, not the input: one example each is enough.
FIXED_COST = {"GET /api/v1/ready"}


def fuzz_operation(
    operation: Any, mode: GenerationMode, headers: dict[str, str], examples: int,
    path_parameters: dict[str, str] | None = None, forbidden: frozenset[str] = frozenset(),
) -> list[tuple[str, int, str]]:  # fmt: skip
    """(request, status, problem) for every generated case; problem is '' when all is well.
    ``forbidden``: strings no answer may contain (stored files' names, patient numbers)."""
    seen: list[tuple[str, int, str]] = []
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=("explicit", "generate"),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        problem = ""
        if response.status_code >= 500:
            problem = "server error"
        elif response.status_code >= 400:
            try:
                body = json.loads(response.content)
                if not isinstance(body.get("error", {}).get("message"), str):
                    problem = "error body without a message"
            except ValueError:
                problem = "error body is not JSON"
        text = response.content.decode("utf-8", "replace")
        named = sorted(name for name in forbidden if name in text)
        if named and not problem:
            problem = f"the answer names {named[:3]}"
        request = f"{case.method} {case.formatted_path} {case.query or ''} {str(case.body)[:120]}"
        seen.append((request, response.status_code, problem))

    # Unsatisfiable: no invalid input exists for an operation without parameters.
    with contextlib.suppress(Unsatisfiable):
        run()
    return seen


@pytest.fixture(scope="module")
def api_schema(reliability_app: Flask) -> Any:
    return schemathesis.openapi.from_wsgi(OPENAPI_PATH, reliability_app)


@pytest.mark.parametrize("with_key", [True, False], ids=["valid-key", "no-key"])
def test_no_generated_request_gets_a_server_error(
    api_schema: Any, seeded_graph: SeededGraph, reliability_app: Flask, with_key: bool
) -> None:
    headers = seeded_graph.headers("write") if with_key else {}
    results: list[tuple[str, int, str]] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, "the OpenAPI document lists the API's operations"
    real_key = {"key": seeded_graph.image_keys[0]}
    forbidden = identifying_names(seeded_graph)
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        examples = 1 if label in FIXED_COST else EXAMPLES
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        for mode in modes:
            results += fuzz_operation(operation, mode, headers, examples, forbidden=forbidden)
        if with_key and "{key}" in operation.path and operation.method.upper() == "GET":
            # Also with a stored image's key, so the generated query strings reach real data;
            # reads only: a generated DELETE or PATCH would erase or relabel the image that the
            # later privacy and bad-input tests rely on.
            results += fuzz_operation(
                operation, GenerationMode.POSITIVE, headers, examples, path_parameters=real_key,
                forbidden=forbidden,
            )  # fmt: skip
    statuses = Counter(status for _, status, _ in results)
    print(f"{len(results)} requests ({'with' if with_key else 'without'} a key): {statuses}")
    problems = [(request, status, problem) for request, status, problem in results if problem]
    assert not problems, problems[:20]
    assert len(results) >= 100
    if with_key:
        assert statuses[200] + statuses[202] > 0, "no generated request succeeded"


@pytest.fixture(scope="module", autouse=True)
def _drop_queued_jobs() -> Any:
    """Generated valid cluster requests enqueue real jobs; drop those still waiting after."""
    yield

    app.control.purge()


# --- issue 16: hostile values in every parameter -----------------------------------------------
def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` levels of alternating lists and objects (built without recursion)."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


HOSTILE_VALUES = st.one_of(
    st.sampled_from(
        [2**127, -(2**127), 2**128 - 1, 2**64, 2**63, -(2**63) - 1, 10**40,
         math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324]
    ),
    st.integers(min_value=-(2**127), max_value=2**128),
    st.builds(nested, st.integers(min_value=2, max_value=400)),
    st.builds(lambda d, n: nested(d, n), st.integers(2, 60), st.sampled_from([math.inf, 2**100])),
)  # fmt: skip
HOSTILE_TEXT = st.one_of(
    st.sampled_from(["Infinity", "-Infinity", "NaN", "1e400", "-1e400", str(2**127), str(-(2**128)),
                     str(2**64), "9" * 4000, "0x7fffffffffffffff"]),
    st.integers(min_value=-(2**127), max_value=2**128).map(str),
)  # fmt: skip


def fuzz_hostile(
    operation: Any, headers: dict[str, str], examples: int, app: Flask
) -> list[tuple[str, int, str]]:
    """Valid generated cases, then one body field, query parameter or path parameter replaced
    by a 128-bit integer, an infinity, a NaN or a deeply nested value."""
    seen: list[tuple[str, int, str]] = []
    strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)

    @settings(
        max_examples=examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck), phases=("explicit", "generate"),
    )  # fmt: skip
    @given(case=strategy, value=HOSTILE_VALUES, text=HOSTILE_TEXT, pick=st.integers(0, 1000))
    def run(case: Any, value: Any, text: str, pick: int) -> None:
        targets: list[tuple[str, str]] = []
        if isinstance(case.body, dict):
            targets += [("body", name) for name in case.body] + [("body", "k"), ("body", "seed")]
        elif case.body is not None:
            targets.append(("whole-body", ""))
        targets += [("query", name) for name in (case.query or {})]
        targets += [("path", name) for name in (case.path_parameters or {})]
        if not targets:
            return
        where, name = targets[pick % len(targets)]
        if where in ("body", "whole-body"):
            body = {**case.body, name: value} if where == "body" else value
            # JSON text as Python writes it: Infinity, NaN and integers of any size, which a
            # strict client (schemathesis's transport) refuses to send.
            with app.test_client() as client:
                raw = client.open(
                    case.formatted_path, method=case.method, query_string=case.query or None,
                    data=json.dumps(body, allow_nan=True),
                    headers={**headers, "Content-Type": "application/json"},
                )  # fmt: skip
                status, content = raw.status_code, raw.data
            case.body = body
        else:
            if where == "query":
                case.query = {**case.query, name: text}
            else:
                case.path_parameters = {**case.path_parameters, name: text}
            response = case.call(headers=headers)
            status, content = response.status_code, response.content
        problem = ""
        if status >= 500:
            problem = "server error"
        elif status >= 400:
            try:
                body = json.loads(content)
                if not isinstance(body.get("error", {}).get("message"), str):
                    problem = "error body without a message"
            except ValueError:
                problem = "error body is not JSON"
        request = f"{case.method} {case.formatted_path} {case.query or ''} {str(case.body)[:120]}"
        seen.append((request, status, problem))

    with contextlib.suppress(Unsatisfiable):
        run()
    return seen


def test_hostile_numbers_and_nesting_never_get_a_server_error(
    api_schema: Any, seeded_graph: SeededGraph, reliability_app: Flask
) -> None:
    headers = seeded_graph.headers("write")
    results: list[tuple[str, int, str]] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label in FIXED_COST:
            continue
        results += fuzz_hostile(operation, headers, EXAMPLES * 2, reliability_app)
    statuses = Counter(status for _, status, _ in results)
    print(f"{len(results)} hostile requests: {statuses}")
    problems = [entry for entry in results if entry[2]]
    assert not problems, problems[:20]
    assert len(results) >= 150
