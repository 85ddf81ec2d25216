"""Client configuration: what the broker waits for before answering a fetch, per consumer role,
and how soon a producer retries."""

from orchestrator.kafka_clients import consumer_config, producer_config
from orchestrator.settings import KafkaSettings, Settings


def _settings(**kafka) -> Settings:
    return Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9092", **kafka))


def test_a_stage_on_the_payment_path_is_answered_as_soon_as_one_byte_is_committed():
    config = consumer_config(_settings(), "g", "c", role="main")
    assert config["fetch.min.bytes"] == 1
    # The wait only spaces out the fetches of a consumer with nothing to read: a commit
    # completes a waiting read_committed fetch at once (perf/commit_to_consume.py: p50
    # about 2 ms from commit to consume, with 100 and 500 ms alike).
    assert config["fetch.wait.max.ms"] == 500
    assert config["isolation.level"] == "read_committed"


def test_the_tracking_sink_batches_its_fetches_so_commits_elsewhere_do_not_wake_it():
    config = consumer_config(_settings(), "g", "c", role="sink")
    assert config["fetch.min.bytes"] == 64 * 1024
    assert config["fetch.wait.max.ms"] == 100
    assert config["isolation.level"] == "read_committed"


def test_retry_topics_long_poll():
    assert consumer_config(_settings(), "g", "c", role="retry")["fetch.wait.max.ms"] == 1000


def test_an_operators_librdkafka_option_wins_over_the_role_default():
    config = consumer_config(_settings(extra={"fetch.min.bytes": "4096"}), "g", "c", role="sink")
    assert config["fetch.min.bytes"] == "4096"


def test_a_transaction_begun_right_after_a_commit_is_retried_soon_not_after_100_ms():
    assert producer_config(_settings(), "c")["retry.backoff.ms"] == 5
    # an operator's choice still wins
    assert producer_config(_settings(extra={"retry.backoff.ms": "50"}), "c")["retry.backoff.ms"] == "50"
