"""schemathesis against /api/openapi.json, inside the suite: generated requests (valid and invalid) to every
operation, as the operator and as an owner, on an account with data. No answer may be a 500, and every answer
must match the document (status, content type, body schema).

(schemathesis' pytest plugin does not run on pytest 9 here, so the operations are walked in one test, each with its
own hypothesis run.)"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.routing import Mount

from api.app import create_api
from api.context import ApiContext
from tests.api.conftest import OPERATOR

MAX_EXAMPLES = 25
# Not `positive_data_acceptance`: a schema-valid request may still be refused for what it means (an unknown cursor,
# a plan change the plan does not allow) with a documented 400.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]


def _fuzz(operation: Any, token: str, account_id: str) -> Any:
    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        if case.path_parameters and "account_id" in case.path_parameters:
            case.path_parameters["account_id"] = account_id
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
    return run


def test_no_500_and_answers_match_the_document(ctx: ApiContext, tenant: Any) -> None:
    t = tenant("enterprise")
    ctx.accounts.issue_key(t.account_id, "fuzz")
    app = Starlette(routes=[Mount("/api", app=create_api(ctx))])
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    failures: list[str] = []
    walked = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        token = OPERATOR if operation.definition.raw.get("x-permission") == "operator" else t.owner
        try:
            _fuzz(operation, token, t.account_id)()
        except BaseException as exc:    # a FailureGroup: every failing operation is reported at the end
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
        walked += 1
    assert walked >= 10
    assert not failures, "\n\n".join(failures)
