"""Push-to-running, podhook versus the naive hook (bench/naive_hook.py), in the same world.

The world: the integration stack (Redis, distribution registry with notifications, Podman API,
a systemd user manager) with one host running 21 labeled containers under `podman generate
systemd --new` units: `app` (the pushed reference) and 20 others of 20 other images. Rounds
alternate podhook and the naive hook, N of each; the registry's notifications go to the one
whose round it is (`podhook serve`, or the naive hook, which runs `podman auto-update` per
manifest push). The podhook worker runs only during podhook rounds (started before each and
idle after its start-up reconcile), so it does not react to the naive hook's restarts.

Each round pushes a new image to `app`'s tag (skopeo) and times, from the end of the push:

* running: `app` runs the new image id and its unit is active (polled every 50 ms through the
  Podman API and systemctl, the same watch for both hooks);
* podhook, job done: the job finished (seen by polling); it includes the settle window (the
  unit watched --settle seconds after its restart, then checked) and the report;
* naive, hook done: `podman auto-update` exited; it has no settle window (Podman 4.3 waits
  for the restart job's result, "done", and stops there), so "done minus settle" is podhook's
  figure to compare with it.

Each round's line also shows the push itself, "notified" (podhook: the job queued; naive: the
notification received) and "started" (the job's work began; `podman auto-update` started).
Prints median and p90 of each figure and the ratios podhook/naive.

    .venv/bin/python bench/push_to_running.py [--rounds 8] [--others 20] [--settle 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

from hook_world import (
    HOST,
    TOKEN,
    NaiveHook,
    Podhook,
    PodmanAPI,
    exit_on_sigterm,
    harness,
    image_id,
    percentile,
    system_manager_socket,
    wait_running,
)

from workers import audit
from workers.events import make_event
from workers.joblog import get_job

REPOSITORY, TAG = "bench/app", "1"


def podhook_round(
    stack: harness.Stack, podhook: Podhook, api: PodmanAPI, number: int
) -> dict[str, float]:
    """One push with notifications to podhook; its figures, in seconds from the push's end."""
    podhook.start_worker()
    stack.registry.configure(podhook.url, TOKEN)
    local = stack.build_image(REPOSITORY, TAG, marker=f"podhook-{number}")
    push_started = time.time()
    digest = stack.push_image(local, REPOSITORY, TAG)
    pushed = time.time()
    new = image_id(stack, REPOSITORY, TAG)
    running = wait_running(stack, api, {"app": new})["app"]
    event = make_event(stack.registry.host, REPOSITORY, TAG, digest)
    delivery = harness.wait_for(
        lambda: next(
            (
                e.data
                for e in audit.read(podhook.redis, kind="delivery")
                for j in e.data["jobs"]
                if (j["host"], j["reference"], j["digest"]) == (HOST, event.reference, digest)
            ),
            None,
        ),
        60,
        "the delivery of the push",
        interval=0.02,
    )
    [job_id] = {j["job"] for j in delivery["jobs"] if j["host"] == HOST}
    record = harness.wait_for(
        lambda: (r := get_job(podhook.redis, job_id)) and r.state in ("finished", "failed") and r,
        120,
        f"job {job_id}",
        interval=0.02,
    )
    done = time.time()
    if record.state != "finished" or record.report is None:
        raise SystemExit(f"podhook round {number}: job {record.state}: {record.error}")
    [row] = [r for r in record.report.rows if r.container_name == "app"]
    if row.state.value != "updated":
        raise SystemExit(f"podhook round {number}: app {row.state.value}: {row.reason}")
    return {
        "push": pushed - push_started,
        "queued": delivery["queued_at"] - pushed,
        "job_started": record.report.started_at - pushed,
        "pulled": row.timings["pulled"],
        "running": running - pushed,
        "done": done - pushed,
    }


def naive_round(
    stack: harness.Stack, naive: NaiveHook, api: PodmanAPI, number: int
) -> dict[str, float]:
    """One push with notifications to the naive hook; its figures from the push's end."""
    stack.registry.configure(naive.url, TOKEN)
    runs_before = len(naive.status()["runs"])
    local = stack.build_image(REPOSITORY, TAG, marker=f"naive-{number}")
    push_started = time.time()
    stack.push_image(local, REPOSITORY, TAG)
    pushed = time.time()
    new = image_id(stack, REPOSITORY, TAG)
    running = wait_running(stack, api, {"app": new})["app"]
    runs = naive.wait_idle(runs_before + 1)[runs_before:]
    mine = next((r for r in runs if "app" in r["updated"]), None)
    if mine is None or mine["exit"] != 0:
        raise SystemExit(f"naive round {number}: no run updated app: {runs}")
    return {
        "push": pushed - push_started,
        "received": mine["received"] - pushed,
        "autoupdate_started": mine["started"] - pushed,
        "running": running - pushed,
        "done": mine["ended"] - pushed,
        "runs": len(runs),
    }


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):5.2f}s  p90 {percentile(values, 0.9):5.2f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of each hook")
    parser.add_argument("--others", type=int, default=20, help="other labeled containers")
    parser.add_argument("--settle", type=float, default=2.0, help="PODHOOK_SETTLE_SECONDS")
    args = parser.parse_args()
    exit_on_sigterm()
    started = time.monotonic()
    with harness.start_stack() as stack, system_manager_socket(stack):
        first = stack.build_and_push(REPOSITORY, TAG, marker="v0")
        stack.create_unit_container("app", first.ref)
        for index in range(args.others):
            other = stack.build_and_push(f"bench/other-{index:02d}", "1")
            stack.create_unit_container(f"other-{index:02d}", other.ref)
        api = PodmanAPI(stack)
        podhook = Podhook(stack, args.settle)
        naive = NaiveHook(stack)
        print(
            f"world: 1 host, {args.others + 1} labeled containers of {args.others + 1} images, "
            f"settle {args.settle:g}s; ready in {time.monotonic() - started:.0f}s"
        )
        print(
            f"{'round':>5} {'hook':<7} {'push':>6} {'notified':>8} {'started':>7} "
            f"{'running':>7} {'done':>6}  (seconds from the end of the push)"
        )
        rounds: dict[str, list[dict[str, float]]] = {"podhook": [], "naive": []}
        for number in range(1, args.rounds + 1):
            p = podhook_round(stack, podhook, api, number)
            podhook.stop_worker()
            rounds["podhook"].append(p)
            print(
                f"{number:>5} {'podhook':<7} {p['push']:5.2f}s {p['queued']:7.2f}s "
                f"{p['job_started']:6.2f}s {p['running']:6.2f}s {p['done']:5.2f}s"
                f"  (pull done {p['pulled']:.2f}s into the job)"
            )
            n = naive_round(stack, naive, api, number)
            rounds["naive"].append(n)
            print(
                f"{number:>5} {'naive':<7} {n['push']:5.2f}s {n['received']:7.2f}s "
                f"{n['autoupdate_started']:6.2f}s {n['running']:6.2f}s {n['done']:5.2f}s"
            )
        p_running = [r["running"] for r in rounds["podhook"]]
        p_done = [r["done"] for r in rounds["podhook"]]
        p_work = [r["done"] - args.settle for r in rounds["podhook"]]
        n_running = [r["running"] for r in rounds["naive"]]
        n_done = [r["done"] for r in rounds["naive"]]
        print(f"\nover {args.rounds} rounds of each, from the end of the push:")
        print(f"  podhook push → running        {summary(p_running)}")
        print(f"  podhook push → job done       {summary(p_done)}  (settle {args.settle:g}s in it)")
        print(f"  podhook job done − settle     {summary(p_work)}")
        print(f"  naive   push → running        {summary(n_running)}")
        print(f"  naive   push → auto-update done {summary(n_done)}  (no settle window)")
        ratio = statistics.median(p_running) / statistics.median(n_running)
        print(f"ratio podhook/naive, push → running (medians): {ratio:.2f}")
        ratio = statistics.median(p_work) / statistics.median(n_done)
        print(f"ratio podhook/naive, push → done without the settle window (medians): {ratio:.2f}")
        ratio = statistics.median(p_done) / statistics.median(n_done)
        print(f"ratio podhook/naive, push → done as each reports it (medians): {ratio:.2f}")
        print(f"whole run {time.monotonic() - started:.0f}s; 2-core machine shared with others")


if __name__ == "__main__":
    main()
