"""How `payorch dlq` names itself to the broker (no broker: the consumer's configuration)."""

from __future__ import annotations

import pytest

from orchestrator import dlq
from orchestrator.settings import Settings


class _Configured(Exception):
    pass


def test_the_dead_letter_reader_uses_the_deployments_group_prefix(monkeypatch, tmp_path):
    seen = {}

    def consumer(config):
        seen.update(config)
        raise _Configured  # the configuration is what this test is about

    monkeypatch.setattr(dlq, "Consumer", consumer)
    settings = Settings(data_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:9"},
                        consumer_group_prefix="payorch-emea")
    with pytest.raises(_Configured):
        next(dlq.DeadLetters(settings).messages())
    # A tenant's access policy grants its own groups (`payorch-<tenant>.*`) and no other.
    assert seen["group.id"] == "payorch-emea.dlq-inspector"
    assert seen["enable.auto.commit"] is False
