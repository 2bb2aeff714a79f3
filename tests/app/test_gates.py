"""The fleet gate on a real Redis: approvals, minimum image age and maintenance windows, read
from container labels and decided by the settings' clock."""

from __future__ import annotations

from datetime import UTC, datetime

from workers.approvals import approve, pending_approvals
from workers.gates import FleetGate
from workers.podman_runtime import Container
from workers.report import UpdateState
from workers.settings import load_settings
from workers.wakeups import pending_wakeups

REF = "registry.example/shop/web:1"
DIGEST = "sha256:" + "3" * 64


def container(**labels: str) -> Container:
    return Container(
        id="c1",
        name="web",
        image_reference=REF,
        image_id="1" * 64,
        labels={"io.containers.autoupdate": "registry", **labels},
    )


def gate_at(redis, moment: str, lookups: list[str] | None = None) -> FleetGate:
    offset = (
        datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp()
        - datetime.now(UTC).timestamp()
    )
    settings = load_settings({"PODHOOK_HOST_ID": "web-1", "PODHOOK_CLOCK_OFFSET": repr(offset)})

    def lookup(reference: str, authfile: str | None) -> str:
        (lookups if lookups is not None else []).append(reference)
        return DIGEST

    return FleetGate(redis, settings, "web-1", lookup)


def test_an_update_waits_for_its_approval_then_runs(redis):
    web = container(**{"io.podhook.approval": "required"})
    gate = gate_at(redis, "2026-12-02T10:00:00")
    hold = gate.hold(REF, DIGEST, [web])
    assert hold is not None and hold.state is UpdateState.PENDING
    assert f"podhook approve {REF} --digest {DIGEST}" in hold.reason
    [pending] = pending_approvals(redis)
    assert (pending.host, pending.reference, pending.digest) == ("web-1", REF, DIGEST)
    approve(redis, REF, DIGEST)
    assert gate.hold(REF, DIGEST, [web]) is None
    gate.settled(REF, DIGEST, [])
    assert pending_approvals(redis) == []


def test_a_closed_window_names_its_opening_and_wakes_the_host_then(redis):
    web = container(**{"io.podhook.window": "daily 02:00-04:00 UTC"})
    gate = gate_at(redis, "2026-12-02T10:00:00")
    hold = gate.hold(REF, DIGEST, [web])
    opens = datetime(2026, 12, 3, 2, 0, tzinfo=UTC).timestamp()
    assert hold is not None and hold.state is UpdateState.WAITING and hold.until == opens
    assert "opens at 2026-12-03 02:00:00 UTC" in hold.reason
    assert pending_wakeups(redis, "web-1") == {REF: opens}
    assert gate_at(redis, "2026-12-03T02:30:00").hold(REF, DIGEST, [web]) is None


def test_an_image_too_young_waits_until_it_comes_of_age(redis):
    web = container(**{"io.podhook.min-age": "24h"})
    hold = gate_at(redis, "2026-12-02T10:00:00").hold(REF, DIGEST, [web])
    assert hold is not None and hold.until is not None
    assert "is reached at 2026-12-03 10:00:00 UTC" in hold.reason
    assert gate_at(redis, "2026-12-03T10:00:01").hold(REF, DIGEST, [web]) is None


def test_the_registry_is_asked_for_a_digest_only_when_a_policy_needs_one(redis):
    lookups: list[str] = []
    gate = gate_at(redis, "2026-12-02T10:00:00", lookups)
    assert gate.digest_for(REF, [container()]) is None
    assert gate.digest_for(REF, [container(**{"io.podhook.min-age": "1h"})]) == DIGEST
    assert lookups == [REF]
