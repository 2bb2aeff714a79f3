"""Push-to-running latency on real parts: skopeo push → notification → job → pull → restart.

Starts the integration stack (Redis, distribution registry with notifications, Podman API,
a systemd user manager), `podhook serve` and `podhook worker`, runs one container under a
`podman generate systemd --new` unit, then pushes N new images to its tag one after another.
For each it prints the time from the end of the push to the unit active on the new image, and
where the time went (from the job's audit trail): when the job was queued (counted from the
start of the push: the registry notifies before skopeo exits), how long it waited for a worker,
the pull, and the restart with its settle window. Ends with median, p90 and the share of the
settle window (the time a restarted unit must stay up before the update counts).

    .venv/bin/python bench/push_to_restart.py [--pushes 5] [--settle 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import harness  # noqa: E402

from workers import audit  # noqa: E402
from workers.events import make_event  # noqa: E402
from workers.hosts import get_hosts  # noqa: E402
from workers.joblog import get_job  # noqa: E402

TOKEN = "bench-token"
HOST = "bench-host"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--settle", type=float, default=2.0)
    args = parser.parse_args()
    podhook = str(Path(sys.executable).parent / "podhook")
    env = {
        "PODHOOK_WEBHOOK_TOKEN": TOKEN,
        "PODHOOK_HOST_ID": HOST,
        "PODHOOK_SETTLE_SECONDS": str(args.settle),
        "PODHOOK_JOB_RETRIES": "0",
    }
    with harness.start_stack() as stack:
        redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
        port = harness.free_port()
        stack.start_process(
            [podhook, "serve", "--bind", f"127.0.0.1:{port}"],
            env=env,
            name="gunicorn",
            ready_url=f"http://127.0.0.1:{port}/healthz",
        )
        stack.start_process(
            [podhook, "worker"], env=env, name="worker", ready=lambda: HOST in get_hosts(redis)
        )
        stack.registry.configure(f"http://127.0.0.1:{port}/v1/webhooks/distribution", TOKEN)
        first = stack.build_and_push("bench/app", "1", marker="v0")
        unit = stack.create_unit_container("app", first.ref)

        totals = []
        print(
            f"{'push':>4} {'total':>7} {'queued':>7} {'wait':>6} {'pull':>6} {'restart+settle':>14}"
        )
        for number in range(1, args.pushes + 1):
            local = stack.build_image("bench/app", "1", marker=f"v{number}")
            before = stack.systemd.invocation_id(unit)
            push_started = time.time()
            digest = stack.push_image(local, "bench/app", "1")
            pushed = time.time()
            event = make_event(stack.registry.host, "bench/app", "1", digest)
            job_id = ""
            while not job_id:  # the job this push reached, from the audit trail of deliveries
                job_id = next(
                    (
                        str(j["job"])
                        for e in audit.read(redis, kind="delivery")
                        for j in e.data["jobs"]
                        if (j["host"], j["reference"], j["digest"])
                        == (HOST, event.reference, event.digest)
                    ),
                    "",
                )
                time.sleep(0.02)
            while True:
                record = get_job(redis, job_id)
                if record and record.state in ("finished", "failed"):
                    break
                time.sleep(0.02)
            stack.wait_unit(unit, "active", 60, not_invocation=before)
            done = time.time()
            if record.state != "finished":
                raise SystemExit(f"push {number}: job {record.state}: {record.error}")
            assert record.report is not None
            [row] = record.report.rows
            delivery = next(
                e.data
                for e in audit.read(redis, kind="delivery")
                if any(j["job"] == job_id for j in e.data["jobs"])
            )
            started = record.report.started_at or 0.0
            totals.append(done - pushed)
            print(
                f"{number:>4} {done - pushed:6.2f}s {delivery['queued_at'] - push_started:6.2f}s "
                f"{started - delivery['queued_at']:5.2f}s {row.timings['pulled']:5.2f}s "
                f"{row.timings['active'] - row.timings['pulled']:13.2f}s"
                f"   (push itself {pushed - push_started:.2f}s)"
            )
        median = statistics.median(totals)
        p90 = sorted(totals)[max(0, int(len(totals) * 0.9) - 1)]
        print(f"push-to-running: median {median:.2f}s, p90 {p90:.2f}s over {len(totals)} pushes")
        print(
            f"settle window {args.settle:.1f}s = {args.settle / median:.0%} of the median; "
            f"podhook's own work {median - args.settle:.2f}s"
        )


if __name__ == "__main__":
    main()
