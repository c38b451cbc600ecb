"""openapi/openapi.json is generated from the code (`make openapi`); this fails when they drift."""

from __future__ import annotations

import json
from pathlib import Path

from calbroker.app import create_app, openapi_document
from calbroker.config import Settings

COMMITTED = Path(__file__).parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_code(tmp_path: Path) -> None:
    generated = json.dumps(openapi_document(create_app(Settings(data_dir=tmp_path))), indent=2, sort_keys=True)
    committed = COMMITTED.read_text()
    assert generated + "\n" == committed, "openapi/openapi.json is stale: run `make openapi` and commit it"


def test_every_v1_operation_documents_its_problems() -> None:
    document = json.loads(COMMITTED.read_text())
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "401" in responses, f"{method.upper()} {path} does not document 401"
            problem = responses["401"]["content"]["application/problem+json"]
            assert problem["schema"], f"{method.upper()} {path} 401 has no schema"
