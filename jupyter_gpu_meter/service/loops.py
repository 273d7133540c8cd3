"""The meter's loops, like the hub's own: run at start, then on a period; back off on failure.

- :func:`every`: a step on a period (reconcile, policies, sampling, flush, storage);
- :class:`DockerEvents`: a thread following Docker's event stream into a queue
  the event loop reads (:func:`handle_events`);
- :func:`follow_the_hub`: a managed service stops when its hub is gone.

None of them touches the meter's state: they call the steps the meter gives them.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time


async def every(seconds: float, step, what: str, log, *, first_after: float = 0):
    """Run `step` (after `first_after` s), then every `seconds`; on failure log, back off."""
    await asyncio.sleep(first_after)
    delay = seconds
    while True:
        try:
            await step()
            delay = seconds
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = min(max(delay * 2, seconds), 60)
            log.exception("%s failed, retrying in %ss", what, delay)
        await asyncio.sleep(delay)


class DockerEvents:
    """A thread that puts Docker's events, in order, into an asyncio queue of `loop`.

    Each (re)connection first replays what Docker still has since the last
    event handled (`since_ns()`, bounded by now), then asks for a reconcile
    (``{"reconcile": True}``), then follows live events: a session that ended
    while the meter was not watching is closed at its exact time from the
    replay before the reconcile would fall back to an estimate. The times are
    Docker's own (nanoseconds since the epoch), never the meter's clock.
    """

    def __init__(self, tracker, since_ns, log):
        self.tracker = tracker
        self.since_ns = since_ns
        self.log = log
        self._stopping = threading.Event()
        self._stream = None

    def start(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        thread = threading.Thread(
            target=self._follow, args=(loop, queue), name="gpu-meter-events", daemon=True
        )
        thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._stream is not None:
            self._stream.close()

    def _follow(self, loop, queue):
        delay = 1

        def push(item):
            loop.call_soon_threadsafe(queue.put_nowait, item)

        while not self._stopping.is_set():
            try:
                until_ns = time.time_ns()  # Docker's clock bounds Docker's replay
                for event in self.tracker.events(self.since_ns(), until_ns):
                    push(event)
                push({"reconcile": True})
                self._stream = self.tracker.events(until_ns)
                for event in self._stream:
                    push(event)
                    delay = 1
            except Exception as e:
                if self._stopping.is_set():
                    return
                self.log.warning("Docker events failed (%s), retrying in %ss", e, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 30)


async def handle_events(queue: asyncio.Queue, *, reconcile, handle_event, log):
    """On the loop: each queued Docker event to `handle_event`; a reconcile request
    (the stream broke: Docker may have restarted) to `reconcile`. A failure is logged."""
    while True:
        event = await queue.get()
        try:
            if event.get("reconcile"):
                await reconcile()
            else:
                await handle_event(event)
        except Exception:
            log.exception("Handling Docker event %s failed", event)


async def follow_the_hub(stop: asyncio.Event, log):
    """A managed service lives and dies with its hub: if the hub is killed
    (its pid is gone as our parent), set `stop`, so the next hub's meter can start."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 (no event tells of a parent's death)
        await asyncio.sleep(1)
    log.warning("The hub (pid %s) is gone: stopping the meter", parent)
    stop.set()
