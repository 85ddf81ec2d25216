"""Builders shared by the runtime unit tests: stand-in consumed messages, a runner with
real unconnected clients (or stand-in clients a test passes it), and a checkpoint that
records what a batch would produce."""

from __future__ import annotations

from orchestrator.events import EventCodec
from orchestrator.runtime.checkpoint import Checkpoint
from orchestrator.runtime.clients import StageClients
from orchestrator.runtime.loop import StageRunner
from orchestrator.settings import REPO_ROOT, KafkaSettings, RetrySettings, RuntimeSettings, Settings
from orchestrator.wire import event_headers

CODEC = EventCodec(REPO_ROOT / "schemas")
ORIGIN = "emea.payments.routed.v1"


class StandInMessage:
    def __init__(self, event, *, topic: str = ORIGIN, offset: int = 7, extra_headers=()):
        self._topic, self._offset = topic, offset
        self._value = CODEC.encode(event)
        self._headers = event_headers(event, CODEC.writer.version) + list(extra_headers)
        self._key = event.payment_id.encode()

    def topic(self): return self._topic
    def partition(self): return 2
    def offset(self): return self._offset
    def key(self): return self._key
    def value(self): return self._value
    def headers(self): return self._headers
    def error(self): return None


class RecordMessage(StandInMessage):
    """A record a process produced, as a consumer of its topic would read it back."""

    def __init__(self, record: tuple, *, offset: int = 11, headers: list | None = None):
        self._topic, self._key, self._value, self._headers = record
        self._offset = offset
        if headers is not None:
            self._headers = headers


def runner(*stages, clients: StageClients | None = None) -> StageRunner:
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                        runtime=RuntimeSettings(exactly_once=False,
                                                retry=RetrySettings(backoff_s=(1.0, 4.0), jitter=0.0)))
    return StageRunner(stages, settings, ["emea"], CODEC, clients=clients)


class StandInConsumer:
    """A consumer with nothing to read that records how long each poll would have waited."""

    def __init__(self) -> None:
        self.polls: list[float] = []

    def poll(self, timeout: float):
        self.polls.append(timeout)
        return None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list:
        return []

    def assignment(self) -> list:
        return []

    def close(self) -> None:
        pass


class StandInProducer:
    """A producer that is never asked to produce (the tests' checkpoints record instead)."""

    def flush(self, timeout: float = -1) -> int:
        return 0


class RecordingCheckpoint(Checkpoint):
    """Keeps what a batch would produce instead of producing it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple] = []

    def add_records(self, records) -> None:
        self.records += records
        self.record_count += len(records)

    def commit(self) -> bool:
        self.state.commit()  # the hosted stages' store writes, as a real checkpoint does
        return True


def headers_of(record) -> dict[str, str]:
    return {k: v.decode() for k, v in record[3]}


def produced(run: StageRunner, *messages) -> tuple[list, list, list]:
    """(output records, retry records, dead-letter records) of one batch."""
    checkpoint = RecordingCheckpoint()
    run.process_batch(list(messages), checkpoint)
    checkpoint.commit()
    retry = [r for r in checkpoint.records if ".retry." in r[0]]
    dead = [r for r in checkpoint.records if r[0].endswith(".dlq")]
    return [r for r in checkpoint.records if r not in retry and r not in dead], retry, dead
