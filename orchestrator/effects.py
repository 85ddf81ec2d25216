"""Decisions that wait for an effect: a stage's answer that comes once I/O completes.

A stage whose decision needs a remote answer (execution: the clearing system's pacs.002)
starts the I/O and returns a `Pending` among its outputs instead of waiting. The runtime
keeps consuming and deciding other batches meanwhile; when the future is done it calls
`finish` with the result (on its own thread, inside the checkpoint's state unit) and
treats what comes back exactly as the stage's outputs for those events. The batch that
started the effect, and every batch consumed after it, reach a checkpoint only after
it finished, in consumption order, so offsets are committed in order and with their
outputs, as without effects (see orchestrator/runtime/in_flight.py).

`abandon` tells the stage that `finish` will never be called (the runtime rewound, or
lost its partitions): the events come again and the stage starts the effect again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, eq=False)
class Pending:
    future: Future
    # (the future's result) -> the outputs the stage would have returned: events and RetryLater.
    finish: Callable[[Any], list]
    abandon: Callable[[], None]


def resolve(outputs: Sequence, timeout_s: float | None = None) -> list:
    """`outputs` with every `Pending` waited for and replaced by what it finishes with:
    a stage's answer as one blocking call, for tests and tools that run a stage alone."""
    resolved: list = []
    for output in outputs:
        if isinstance(output, Pending):
            resolved.extend(resolve(output.finish(output.future.result(timeout=timeout_s)), timeout_s))
        else:
            resolved.append(output)
    return resolved
