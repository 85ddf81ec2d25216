"""The intake against its own OpenAPI document, fuzzed by schemathesis, with a credential.

Every operation gets generated requests (valid and invalid headers, parameters and
bodies); each answer must be no server error, a documented status code and content type,
a body that matches the documented schema, and a refusal of calls without a credential.
Left out are two of schemathesis's checks:
- "a schema-valid request is accepted": the JSON schema cannot say everything a payment
  must satisfy (an ISO 4217 currency, the tenant's rails and limits), so a schema-valid
  payment may rightly get 422 `payment-invalid`;
- "a schema-violating request is rejected": it counts an unknown query parameter as a
  violation, and the intake ignores those, as HTTP APIs do. Invalid bodies and headers
  are still generated, and their answers are still checked against the document.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from orchestrator.events import EventCodec
from orchestrator.intake.app import create_app
from orchestrator.intake.credentials import bearer, ensure_local_keys, read_local_keys
from orchestrator.intake.publisher import EventPublisher
from orchestrator.settings import REPO_ROOT, Settings
from orchestrator.topics import TopicNamer
from tests.unit.intake_fakes import FakeProducer
from tests.unit.stage_fixtures import TENANTS

# The schema is read at collection time, so the app exists at import; its lifespan (the
# stores) runs in the module fixture below. "testserver" is the test client's Host.
_DATA_DIR = Path(tempfile.mkdtemp(prefix="payorch-openapi-fuzz-"))
_SETTINGS = Settings(data_dir=_DATA_DIR, kafka={"bootstrap_servers": "127.0.0.1:9"},
                     intake={"publish_timeout_s": 0.2, "allowed_hosts": ["testserver"]})
_APP = create_app(_SETTINGS, TENANTS, publisher=EventPublisher(FakeProducer(), EventCodec(REPO_ROOT / "schemas"),
                                                              TopicNamer(_SETTINGS.topic_template)))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance, schemathesis.checks.negative_data_rejection]


@pytest.fixture(scope="module", autouse=True)
def keys():
    # schemathesis runs the app's lifespan (its stores) around each operation's cases.
    ensure_local_keys(_DATA_DIR, sorted(TENANTS))
    yield
    shutil.rmtree(_DATA_DIR, ignore_errors=True)


# Derandomized: the same cases on every run, so a red run is a finding, not luck.
@schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case):
    key = read_local_keys(_DATA_DIR)["emea"]
    case.call_and_validate(headers=bearer(key), excluded_checks=EXCLUDED_CHECKS)
