"""Deliveries per second through the webhook app under gunicorn, into a real Redis.

Starts a private redis-server and `podhook serve` on loopback ports, registers one host, then
posts a fixed number of distribution envelopes (each a manifest push of its own repository, so
each queues a job: pushes of one reference would join one job) from a pool of client threads.
Prints throughput and latency for 1 and 2 gunicorn workers, and their ratio. Bounded: N
deliveries per run, loopback only.

    .venv/bin/python bench/webhook_throughput.py [--deliveries 2000] [--clients 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import harness  # noqa: E402

from workers.hosts import register_host  # noqa: E402

TOKEN = "bench-token"


def envelope(index: int) -> bytes:
    digest = "sha256:" + f"{index:064x}"
    return json.dumps(
        {
            "events": [
                {
                    "id": f"bench-{index}",
                    "action": "push",
                    "target": {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "repository": f"bench/app-{index}",
                        "tag": "1",
                        "digest": digest,
                    },
                    "request": {"host": "registry.example.com"},
                }
            ]
        }
    ).encode()


def run(workers: int, deliveries: int, clients: int, redis_url: str) -> dict[str, float]:
    port = harness.free_port()
    env = {**os.environ, "PODHOOK_REDIS_URL": redis_url, "PODHOOK_WEBHOOK_TOKEN": TOKEN}
    podhook = str(Path(sys.executable).parent / "podhook")
    server = subprocess.Popen(
        [podhook, "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        harness.wait_for(lambda: harness.port_open(port), 20, "gunicorn")
        redis = Redis.from_url(redis_url)
        redis.flushall()
        register_host(redis, "bench-host")

        def post(index: int) -> tuple[int, float]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            started = time.perf_counter()
            connection.request(
                "POST",
                "/v1/webhooks/distribution",
                body=envelope(index),
                headers={
                    "Content-Type": "application/vnd.docker.distribution.events.v1+json",
                    "Authorization": f"Bearer {TOKEN}",
                },
            )
            status = connection.getresponse().status
            connection.close()
            return status, time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(post, range(deliveries)))
        elapsed = time.perf_counter() - started
        statuses = {status for status, _ in results}
        latencies = sorted(latency for _, latency in results)
        queued = len(redis.keys("rq:job:*"))
        redis.close()
        if statuses != {202} or queued != deliveries:
            raise SystemExit(f"unexpected answers {statuses} or jobs {queued}/{deliveries}")
        return {
            "per_second": deliveries / elapsed,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        redis = harness.start_redis(Path(workdir))
        try:
            print(f"{args.deliveries} deliveries, {args.clients} clients, each queuing one job")
            figures = {}
            for workers in (1, 2):
                figures[workers] = run(workers, args.deliveries, args.clients, redis.url)
                f = figures[workers]
                print(
                    f"gunicorn workers={workers}: {f['per_second']:7.0f} deliveries/s  "
                    f"p50 {f['p50_ms']:6.1f} ms  p99 {f['p99_ms']:6.1f} ms"
                )
            ratio = figures[2]["per_second"] / figures[1]["per_second"]
            print(f"ratio 2 workers / 1 worker: {ratio:.2f}x")
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
