"""Schemathesis against the running API's own OpenAPI document.

`recsys serve` runs as a process on the real PostgreSQL with a small trained model; Schemathesis
generates requests from its OpenAPI document (valid ones and ones that break the schema), sends
them over HTTP and runs all of its default checks on every answer: no 5xx, only documented
statuses, content types and headers, bodies that match their schemas, valid input accepted, invalid
input rejected. Three runs: auth off; auth on with the token; auth on without it (every protected
operation must answer 401, and nothing else). Examples are bounded and the generation
derandomized with a fixed seed (``RECSYS_TEST_SCHEMATHESIS_SEED`` picks another), so a run is
repeatable and fits in CI.

Schemathesis needs the document when pytest collects the tests, before any server runs (its lazy
``from_fixture`` loader does not work with pytest 9), so the document is built here from the same
code and settings, and the first test of each server proves the server serves exactly it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.config import SchemathesisConfig

from service.app import create_app
from service.config import ServiceConfig

from .conftest import serve_process

TOKEN = "t0ken-" + uuid.uuid4().hex
SEED = int(os.environ.get("RECSYS_TEST_SCHEMATHESIS_SEED", "20261201"))
PROTECTED = {"/recommendations/{customer_number}", "/user_embeddings", "/items_from_user", "/items_from_item"}
FUZZ = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def open_url(model_db: str) -> Iterator[str]:
    with serve_process(model_db) as (url, _):
        yield url


@pytest.fixture(scope="module")
def guarded_url(model_db: str) -> Iterator[str]:
    with serve_process(model_db, RECSYS_API_TOKEN=TOKEN) as (url, _):
        yield url


def _no_services() -> Any:
    raise AssertionError("the OpenAPI document is built without running the app")


def _document(token: str | None) -> dict[str, Any]:
    config = ServiceConfig(api_token=SecretStr(token) if token else None)
    return create_app(config, _no_services).openapi()  # the document needs no services: none are opened


def _config(**extra: Any) -> SchemathesisConfig:
    # a fixed seed: Schemathesis draws a new one per run otherwise, whatever Hypothesis's derandomize
    return SchemathesisConfig.from_dict({"seed": SEED, **extra})


OPEN_DOC = _document(None)
GUARDED_DOC = _document(TOKEN)
open_api = schemathesis.openapi.from_dict(OPEN_DOC, config=_config())
# told the token, Schemathesis sends it, and checks that requests without it or with a wrong one fail
with_token = schemathesis.openapi.from_dict(
    GUARDED_DOC, config=_config(auth={"openapi": {"HTTPBearer": {"bearer": TOKEN}}})
)
without_token = schemathesis.openapi.from_dict(GUARDED_DOC, config=_config())


def test_the_fuzzed_documents_are_the_servers_own(open_url: str, guarded_url: str) -> None:
    assert httpx.get(f"{open_url}/openapi.json", timeout=10).json() == OPEN_DOC
    assert httpx.get(f"{guarded_url}/openapi.json", timeout=10).json() == GUARDED_DOC


@open_api.parametrize()
@FUZZ
def test_auth_off(case: Any, open_url: str) -> None:
    case.call_and_validate(base_url=open_url)


@with_token.parametrize()
@FUZZ
def test_auth_on_with_the_token(case: Any, guarded_url: str) -> None:
    case.call_and_validate(base_url=guarded_url)


@without_token.parametrize()
@FUZZ
def test_auth_on_without_the_token(case: Any, guarded_url: str) -> None:
    response = case.call_and_validate(base_url=guarded_url)
    if case.path in PROTECTED:
        assert response.status_code == 401, response.text
