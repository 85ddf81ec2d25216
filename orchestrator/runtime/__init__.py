"""The stage runtime: everything between Kafka and a stage's decision.

One loop per stage process, for the one or more stages it hosts: consume a batch, hand
each message to the hosted stages that read its topic and event type (by header, before
decoding), decode it once, let each stage decide on its part of the batch, and put their
outputs into the open checkpoint, which commits the outputs and the offsets together
once per commit interval. Stages never see Kafka; the runtime never decides.

Failures take one of four paths:
- a business outcome (rejection, hold) is an ordinary output event of the stage;
- a transient fault (a `RetryLater` answer or an exception `retries.is_transient`
  recognises) sends the event to `<topic>.retry.<level>` with backoff and jitter, so its
  partition moves on; transient faults that outlast the levels are dead-lettered;
- a poison message (undecodable bytes, unknown schema, or a stage that raised on it)
  goes to `<topic>.dlq` with its original bytes and headers plus headers that say why;
- a broker that cannot take our outputs, a fatal client error or a hung Kafka call stops
  the process (non-zero exit) without committing, so the supervisor restarts it and
  nothing is lost.

The modules, each one concern (docs/ARCHITECTURE.md §3 has the why):
- `loop.py`: `StageRunner`, the loop itself: poll, pick readers, decide, checkpoint,
  tick, rewind, assignment callbacks, stop.
- `handler.py`: `StageHandler`, what a stage gives the runtime.
- `hosting.py`: the hosted stages of a process, decoding once, deciding with isolation
  of failing events, and hand-over between hosted stages.
- `checkpoint.py`: `Checkpoint`, one interface for both delivery modes (a Kafka
  transaction, or acknowledgements then stored offsets).
- `in_flight.py`: batches waiting for their effects, committed in consumption order.
- `failures.py`: retry and dead-letter records.
- `pausing.py`: retry partitions paused until their head event is due.
- `clients.py`: the process's Kafka clients, and fatal client errors.
- `producing.py`: producing records and waiting for their acknowledgements.
- `watchdog.py`: the hang watchdog, and Kafka calls retried under it.
- `stats.py`: the counters and the throughput log line.

Header names are the wire contract's (orchestrator/wire.py), not the runtime's.
"""
