"""Push routing and ingest cost against fleet size, on a real Redis.

Starts a private redis-server, registers a fleet of hosts that each publish an inventory of
labeled containers (distinct references; one chosen reference is run by exactly one host), then
times `route_push` for that reference, and `dispatch_push` of distinct digests of it with 1
registered host versus the whole fleet. Prints the jobs queued in each case. Bounded: N calls
per run, loopback only.

    .venv/bin/python bench/routing.py [--hosts 1000] [--containers 50] [--pushes 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import harness  # noqa: E402

from workers.events import make_event  # noqa: E402
from workers.hosts import register_host  # noqa: E402
from workers.inventory import publish_inventory  # noqa: E402
from workers.queueing import get_queue  # noqa: E402
from workers.routing import dispatch_push, route_push  # noqa: E402

REGISTRY = "registry.example.com"
STALE_AFTER = 150
INVENTORY_MAX_AGE = 120


def host_name(index: int) -> str:
    return f"host-{index:04d}"


def reference_of(host: int, n: int) -> str:
    return f"{REGISTRY}/team/app-{host}-{n}:1"


def build_host(redis: Redis, h: int, containers: int, now: float) -> None:
    """Register host ``h`` and publish its inventory of ``containers`` labeled containers."""
    host = host_name(h)
    register_host(redis, host, now=now)
    entries = [
        {
            "id": f"{h:032x}{n:032x}",
            "name": f"app-{h}-{n}",
            "unit": f"container-app-{h}-{n}.service",
            "image": reference_of(h, n),
            "reference": reference_of(h, n),
            "image_id": f"{n:032x}{h:032x}",
            "policy": "registry",
        }
        for n in range(containers)
    ]
    publish_inventory(redis, host, {"collected_at": now, "containers": entries})


def build_fleet(redis: Redis, hosts: int, containers: int) -> None:
    """Register ``hosts`` hosts, each publishing ``containers`` labeled containers."""
    now = time.time()
    for h in range(hosts):
        build_host(redis, h, containers, now)


def queued_jobs(redis: Redis, hosts: int) -> int:
    return sum(get_queue(redis, host_name(h)).count for h in range(hosts))


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = max(0, min(len(sorted_values) - 1, int(len(sorted_values) * fraction) - 1))
    return sorted_values[index]


def time_routing(redis: Redis, reference: str, expected: list[str], calls: int) -> dict:
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        routed = route_push(
            redis, reference, stale_after=STALE_AFTER, inventory_max_age=INVENTORY_MAX_AGE
        )
        latencies.append(time.perf_counter() - started)
        if routed != expected:
            raise SystemExit(f"route_push returned {routed[:5]}..., expected {expected}")
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def time_ingest(redis: Redis, chosen_host: int, pushes: int) -> dict:
    repository = f"team/app-{chosen_host}-0"
    latencies = []
    started_all = time.perf_counter()
    for i in range(pushes):
        event = make_event(REGISTRY, repository, "1", f"sha256:{i:064x}", source="bench")
        started = time.perf_counter()
        jobs = dispatch_push(
            redis, event, stale_after=STALE_AFTER, inventory_max_age=INVENTORY_MAX_AGE
        )
        latencies.append(time.perf_counter() - started)
        if [job.host for job in jobs] != [host_name(chosen_host)]:
            raise SystemExit(f"dispatch_push reached {[job.host for job in jobs]}")
    elapsed = time.perf_counter() - started_all
    latencies.sort()
    return {
        "per_second": pushes / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--pushes", type=int, default=2000)
    args = parser.parse_args()
    chosen = args.hosts // 2
    reference = reference_of(chosen, 0)
    with tempfile.TemporaryDirectory() as workdir:
        server = harness.start_redis(Path(workdir))
        redis = Redis.from_url(server.url)
        try:
            print(
                f"push routing and ingest on a real Redis: {args.hosts} hosts x "
                f"{args.containers} labeled containers, one host runs {reference}; "
                f"{args.pushes} calls per figure"
            )

            # 1. Routing over the full fleet.
            started = time.perf_counter()
            build_fleet(redis, args.hosts, args.containers)
            built = time.perf_counter() - started
            print(f"fleet built in {built:.1f} s ({redis.dbsize()} keys)")
            r = time_routing(redis, reference, [host_name(chosen)], args.pushes)
            print(
                f"route_push, {args.hosts} hosts: p50 {r['p50_ms']:.3f} ms  "
                f"p99 {r['p99_ms']:.3f} ms  -> 1 host (goal: <= 5 ms)"
            )

            # 2. Ingest with one registered host, then with the full fleet.
            redis.flushall()
            build_host(redis, chosen, args.containers, time.time())
            one = time_ingest(redis, chosen, args.pushes)
            one_jobs = get_queue(redis, host_name(chosen)).count

            redis.flushall()
            build_fleet(redis, args.hosts, args.containers)
            fleet = time_ingest(redis, chosen, args.pushes)
            fleet_jobs = queued_jobs(redis, args.hosts)

            for label, f, jobs in (
                ("1 host", one, one_jobs),
                (f"{args.hosts} hosts", fleet, fleet_jobs),
            ):
                print(
                    f"dispatch_push, {label:>10}: {f['per_second']:7.0f} pushes/s  "
                    f"p50 {f['p50_ms']:.3f} ms  p99 {f['p99_ms']:.3f} ms  "
                    f"jobs queued {jobs}"
                )
            ratio = one["per_second"] / fleet["per_second"]
            print(
                f"ratio {args.hosts} hosts / 1 host: {ratio:.2f}x the time per push "
                f"(throughput {fleet['per_second'] / one['per_second']:.2f}x) (goal: within 2x)"
            )
            if one_jobs != 1 or fleet_jobs != 1:
                raise SystemExit(f"expected 1 job queued each time, got {one_jobs}, {fleet_jobs}")
        finally:
            redis.close()
            server.stop()


if __name__ == "__main__":
    main()
