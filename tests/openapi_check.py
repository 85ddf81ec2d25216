"""Real answers checked against the intake's OpenAPI document (what /openapi.json says).

Used by the unit tests (intake app on a fake producer) and the integration tests (the
running intake), so every field an answer carries is one the document describes.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator, FormatChecker


def assert_answer_matches(document: dict[str, Any], path: str, answer, *, method: str = "get") -> None:
    """`answer` (an httpx response) is what the document says `method path` answers with
    its status code and content type."""
    responses = document["paths"][path][method]["responses"]
    status = str(answer.status_code)
    assert status in responses, f"{method.upper()} {path} answered {status}, which the document does not list"
    media_type = answer.headers["content-type"].split(";")[0].strip()
    content = responses[status].get("content", {})
    assert media_type in content, f"{method.upper()} {path} {status} answered {media_type}, not {sorted(content)}"
    schema = {**content[media_type]["schema"], "components": document["components"]}
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(answer.json()), key=lambda e: list(e.absolute_path))
    assert not errors, f"{method.upper()} {path} {status} does not match its schema: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:5])
