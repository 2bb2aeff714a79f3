"""A long fuzz run of the webhook route: mutated samples of every source and raw bytes, counted.

Starts a private redis-server, registers one host, and posts N deliveries through the Flask
test client: samples from tests/payloads with fields dropped, retyped or replaced by hostile
strings (lone surrogates, control characters, 70 kB strings), huge arrays, deep nesting, NaN,
duplicate keys, form and gzip bodies and random bytes; half of them authenticated (signed after
mutation; a body over the size limit is 413 before it is authenticated). Prints the count of
answers per status and source, and the failures: a 5xx, a non-JSON answer, or a job queued by
a refused or unauthenticated delivery. Exits 1 on any.

    .venv/bin/python bench/fuzz_edge.py [--requests 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import harness  # noqa: E402
from redis import Redis  # noqa: E402

from tests.app.test_sources_over_http import CASES, SECRET, signed  # noqa: E402
from webhook.app import create_app  # noqa: E402
from workers.hosts import register_host  # noqa: E402
from workers.queueing import get_queue  # noqa: E402

HOSTILE = [
    "",
    "\ud800",
    "x\udfffy",
    "\x00",
    "\x1b[2J\r\n",
    "a" * 70_000,
    "sha256:" + "z" * 64,
    "🐳" * 50,
    "UPPER/Case:TAG",
    "\u2028",
]


def leaf(rng: random.Random) -> Any:
    return rng.choice(
        [None, True, 0, -1, 2**70, 1.5, float("nan"), float("inf"), [], {}, rng.choice(HOSTILE)]
    )


def mutate(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            roll = rng.random()
            if roll < 0.08:
                continue
            out[key] = leaf(rng) if roll < 0.16 else mutate(item, rng)
        return out
    if isinstance(value, list):
        items = [mutate(item, rng) for item in value]
        return items * rng.randint(1, 300) if items and rng.random() < 0.1 else items
    if isinstance(value, str):
        return rng.choice(HOSTILE) if rng.random() < 0.2 else value
    return leaf(rng) if rng.random() < 0.2 else value


def body_of(source: str, rng: random.Random) -> tuple[bytes, str, dict[str, str]]:
    """A hostile body for ``source``: its content type and extra headers."""
    roll = rng.random()
    if roll < 0.1:
        return rng.randbytes(rng.randint(0, 2000)), "application/json", {}
    text = json.dumps(mutate(json.loads(CASES[source][0]), rng), allow_nan=True)
    if roll < 0.15 and text.startswith("{"):
        text = '{"events": [], ' + text[1:]
    elif roll < 0.2:
        depth = rng.randint(1, 5000)
        text = "[" * depth + text + "]" * depth
    payload = text.encode("utf-8", "surrogatepass")
    if roll > 0.95:
        return (
            b"payload=" + quote_from_bytes(payload).encode(),
            "application/x-www-form-urlencoded",
            {},
        )
    if roll > 0.9:
        return gzip.compress(payload), "application/json", {"Content-Encoding": "gzip"}
    return payload, "application/json", {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    logging.disable(logging.CRITICAL)  # the route's lines would outnumber the figures
    with tempfile.TemporaryDirectory(prefix="podhook-fuzz-") as directory:
        server = harness.start_redis(Path(directory))
        try:
            redis = Redis.from_url(server.url)
            register_host(redis, "host-a")
            endpoints = {
                name: {"source": name, "secret": SECRET}
                | (
                    {"registry": "zot.example.com"}
                    if name in ("zot", "artifactory", "nexus")
                    else {}
                )
                for name in CASES
            }
            app = create_app(redis_url=server.url, webhook_token=None, endpoints=endpoints)
            client = app.test_client()
            queue_key = get_queue(redis, "host-a").key
            statuses: Counter[int] = Counter()
            per_source: Counter[tuple[str, int]] = Counter()
            failures: list[str] = []
            started = time.monotonic()
            sources = sorted(CASES)
            for number in range(args.requests):
                source = rng.choice(sources)
                body, content_type, extra = body_of(source, rng)
                authenticated = rng.random() < 0.5
                _, headers, suffix, _ = CASES[source]
                headers = signed(source, body, headers) if authenticated else {}
                jobs_before = redis.llen(queue_key)
                response = client.post(
                    f"/v1/webhooks/{source}{suffix if authenticated else ''}",
                    data=body,
                    headers={"Content-Type": content_type, **headers, **extra},
                )
                status = response.status_code
                statuses[status] += 1
                per_source[(source, status)] += 1
                grew = redis.llen(queue_key) > jobs_before and status >= 300
                if (
                    status >= 500
                    or not response.is_json
                    or (not authenticated and status not in (401, 413))
                ):
                    failures.append(f"#{number} {source}: {status} {response.get_data()[:200]!r}")
                elif grew:
                    failures.append(f"#{number} {source}: {status} but a job was queued")
                if number % 1000 == 999:
                    redis.flushdb()
                    register_host(redis, "host-a")
            elapsed = time.monotonic() - started
        finally:
            server.stop()
    print(f"{args.requests} requests in {elapsed:.1f} s ({args.requests / elapsed:.0f}/s)")
    print("status  count")
    for status, count in sorted(statuses.items()):
        print(f"{status:>6}  {count}")
    print("source         " + "  ".join(f"{s:>6}" for s in sorted(statuses)))
    for source in sorted(CASES):
        counts = "  ".join(f"{per_source[(source, s)]:>6}" for s in sorted(statuses))
        print(f"{source:<14} {counts}")
    print(f"failures: {len(failures)}")
    for failure in failures[:20]:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
