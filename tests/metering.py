"""Helpers for metering tests: Docker's own times as the reference, the ledger as the record."""

import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from jupyter_gpu_meter import labels
from jupyter_gpu_meter.ledger import Ledger, RollupRow

ARTIFACTS = Path(os.environ.get("JGM_ARTIFACTS", "test-artifacts"))


class DockerTimes:
    """Docker's start and die times of managed containers, from its event stream."""

    def __init__(self, docker_client):
        self.times: dict[str, dict[str, datetime]] = {}
        self._stream = docker_client.api.events(
            filters={"type": "container", "label": labels.MANAGED, "event": ["start", "die"]},
            decode=True,
        )
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self):
        try:
            for event in self._stream:
                seconds, nanos = divmod(int(event["timeNano"]), 10**9)
                at = datetime.fromtimestamp(seconds, timezone.utc) + timedelta(
                    microseconds=nanos // 1000
                )
                self.times.setdefault(event["id"], {})[event["Action"]] = at
        except Exception:
            pass  # closed

    def close(self):
        self._stream.close()


def wait_until(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def add_closed_session(
    ledger_url, user, started_at, hours, *, pricing, gpu_model, gpus=1, server="", utilization=()
):
    """A finished session written straight into the meter's ledger; its container id.

    Closed sessions only: the meter's reconcile would close an open one whose
    container it does not know. `utilization`: one percentage a minute, on its
    first GPU, written as the meter writes it (busy time: that share of the minute).
    """
    container_id = f"{abs(hash((user, started_at))):x}".rjust(64, "0")
    uuids = [f"GPU-old-{user}-{i}" for i in range(gpus)]
    with Ledger(ledger_url) as ledger:
        ledger.open_session(
            container_id=container_id,
            user=user,
            server=server,
            gpu_uuids=uuids,
            gpu_model=gpu_model,
            profile="gpu-1",
            price=pricing.snapshot(gpu_model, gpus),
            started_at=started_at,
        )
        ledger.close_session(
            container_id, ended_at=started_at + timedelta(hours=hours), reason="stopped"
        )
        ledger.add_rollups(
            RollupRow(
                container_id,
                uuids[0],
                started_at + timedelta(minutes=m),
                "t",
                60,
                u,
                u,
                0,
                busy_ms=u * 600,
            )
            for m, u in enumerate(utilization)
        )
    return container_id


def session_of(hub, container_id):
    with Ledger(hub.ledger_url) as ledger:
        return ledger.get_session(container_id)


def closed_session(hub, container_id, timeout=60):
    return wait_until(
        lambda: (s := session_of(hub, container_id)) and s.ended_at and s,
        timeout,
        f"session of {container_id[:12]} to close",
    )


def user_sessions(hub, user):
    with Ledger(hub.ledger_url) as ledger:
        return ledger.sessions(user=user)


def rollup_samples(hub, container_id) -> int:
    """How many GPU samples of the container's session the ledger's rollups hold."""
    with Ledger(hub.ledger_url) as ledger:
        return sum(rollup.samples for rollup in ledger.rollups(container_id))


def record_accuracy(test: str, session, docker: dict):
    """Keep the ledger/Docker differences as a test artifact (they go in the docs)."""
    ARTIFACTS.mkdir(exist_ok=True)
    row = {
        "test": test,
        "start_diff_s": (session.started_at - docker["start"]).total_seconds(),
        "end_diff_s": (session.ended_at - docker["die"]).total_seconds(),
        "ledger_duration_s": (session.ended_at - session.started_at).total_seconds(),
        "docker_duration_s": (docker["die"] - docker["start"]).total_seconds(),
    }
    with open(ARTIFACTS / "metering-accuracy.jsonl", "a") as out:
        out.write(json.dumps(row) + "\n")
    return row


def assert_matches_docker(session, docker, test):
    row = record_accuracy(test, session, docker)
    assert abs(row["start_diff_s"]) <= 1, row
    assert abs(row["end_diff_s"]) <= 1, row
    assert abs(row["ledger_duration_s"] - row["docker_duration_s"]) <= 1, row


def give_money_budget(
    hub, user: str, amount: str, currency: str = "USD", period: str = "month"
) -> None:
    """Give `user` a money budget (monthly) in the hub's ledger, once its meter has made it."""
    path = hub.ledger_url.removeprefix("sqlite:///")
    wait_until(lambda: os.path.exists(path), 30, "the meter to create its ledger")
    set_money_budget(hub.ledger_url, user, amount, currency, period)


def set_money_budget(
    url: str, user: str, amount: str, currency: str = "USD", period: str = "month"
) -> None:
    """Give `user` a money budget (monthly) in the ledger at `url` (made if it is not yet)."""
    with Ledger(url) as ledger:
        ledger.ensure_schema()
        ledger.set_budget(
            scope="user",
            name=user,
            amount=Decimal(amount),
            unit="money",
            period=period,
            currency=currency,
            by="test-admin",
            at=datetime.now(timezone.utc),
        )
