"""A burst: 20 references pushed at once, podhook versus the naive hook (bench/naive_hook.py).

The world: the integration stack with one host running 20 labeled containers of 20 images
(`burst-00` … `burst-19`, each under a `podman generate systemd --new` unit). For each
variant, a new image of every reference is built, then all 20 are pushed at once (20 skopeo
processes started together) with the registry's notifications going to that variant's hook:

* podhook with 1 worker process, and with `--processes N` for each N of --processes: one
  job per reference, each pulling, restarting, and watching its unit for the settle window;
* the naive hook: one `podman auto-update` per manifest push notification, one at a time in
  arrival order (a lock in the hook; the registry's deliveries are answered at once), each
  checking all 20 containers against the registry and updating those behind.

Times are from the start of the pushes: the last push ended, the first and the last container
running its new image with its unit active (the same watch for every variant, polled every
50 ms), and the hook's own end (podhook: every job done, settle window included; naive: the
last queued auto-update exited). Prints each variant and the ratios podhook/naive.

    .venv/bin/python bench/burst.py [--references 20] [--processes 1,4] [--settle 2]
"""

from __future__ import annotations

import argparse
import json
import time

from hook_world import (
    TOKEN,
    NaiveHook,
    Podhook,
    PodmanAPI,
    exit_on_sigterm,
    harness,
    image_id,
    push_all,
    system_manager_socket,
    wait_running,
)


def build_all(stack: harness.Stack, names: list[str], marker: str) -> dict[str, tuple]:
    """A new image of every reference; name → (local, repository, tag), and its image ids."""
    built = {}
    for name in names:
        local = stack.build_image(f"bench/{name}", "1", marker=f"{name}-{marker}")
        built[name] = (local, f"bench/{name}", "1")
    return built


def local_ids(stack: harness.Stack, built: dict[str, tuple]) -> dict[str, str]:
    """The id each built image will have once pulled (its config digest, kept by skopeo)."""
    shown = harness.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", *(b[0] for b in built.values())],
        stack.build_env,
    ).stdout.split()
    return dict(zip(built, shown, strict=True))


def burst(
    stack: harness.Stack, api: PodmanAPI, names: list[str], hook_url: str, marker: str
) -> tuple[float, dict[str, float], float]:
    """Push a new image of every reference at once; return the start of the pushes, when each
    container ran its new image, and when the last push ended."""
    stack.registry.configure(hook_url, TOKEN)
    built = build_all(stack, names, marker)
    expected = local_ids(stack, built)
    started = time.time()
    pushed = push_all(stack, built)
    running = wait_running(stack, api, expected, timeout=600)
    for name, (_, repository, tag) in built.items():
        if image_id(stack, repository, tag) != expected[name]:
            raise SystemExit(f"{name}: the registry's image is not the one built")
    return started, running, max(pushed.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=20)
    parser.add_argument("--processes", default="1,4", help="podhook worker processes to try")
    parser.add_argument("--settle", type=float, default=2.0, help="PODHOOK_SETTLE_SECONDS")
    args = parser.parse_args()
    exit_on_sigterm()
    whole = time.monotonic()
    names = [f"burst-{index:02d}" for index in range(args.references)]
    with harness.start_stack() as stack, system_manager_socket(stack):
        for name in names:
            first = stack.build_and_push(f"bench/{name}", "1", marker=f"{name}-v0")
            stack.create_unit_container(name, first.ref)
        api = PodmanAPI(stack)
        podhook = Podhook(stack, args.settle)
        naive = NaiveHook(stack)
        print(
            f"world: 1 host, {len(names)} labeled containers of {len(names)} images, "
            f"settle {args.settle:g}s; ready in {time.monotonic() - whole:.0f}s"
        )
        print(
            f"{'variant':<20} {'pushed':>7} {'first':>7} {'all running':>11} {'hook done':>9}"
            f"  (seconds from the start of the {len(names)} pushes)"
        )
        results: dict[str, float] = {}
        for processes in [int(p) for p in args.processes.split(",")]:
            podhook.start_worker(processes)
            started, running, pushed = burst(stack, api, names, podhook.url, f"podhook-{processes}")
            harness.wait_for(lambda p=processes: podhook.idle(p), 600, "podhook's jobs")
            done = time.time()
            podhook.stop_worker()
            variant = f"podhook --processes {processes}"
            results[variant] = max(running.values()) - started
            print(
                f"{variant:<20} {pushed - started:6.2f}s {min(running.values()) - started:6.2f}s "
                f"{results[variant]:10.2f}s {done - started:8.2f}s"
            )
        runs_before = len(naive.status()["runs"])
        started, running, pushed = burst(stack, api, names, naive.url, "naive")
        runs = naive.wait_idle(runs_before + 1, timeout=900)[runs_before:]
        results["naive"] = max(running.values()) - started
        print(
            f"{'naive':<20} {pushed - started:6.2f}s {min(running.values()) - started:6.2f}s "
            f"{results['naive']:10.2f}s {max(r['ended'] for r in runs) - started:8.2f}s"
        )
        took = ", ".join(f"{r['ended'] - r['started']:.1f}" for r in runs[:6])
        print(
            f"naive hook: {len(runs)} runs of `podman auto-update`, "
            f"{sum(1 for r in runs if r['updated'])} of them updating something "
            f"({', '.join(str(len(r['updated'])) for r in runs if r['updated'])} containers); "
            f"runs took {took}"
            f"{' …' if len(runs) > 6 else ''} s"
        )
        if any(r["exit"] for r in runs):
            print("naive runs that failed:", json.dumps([r for r in runs if r["exit"]])[:2000])
        for variant, seconds in results.items():
            if variant != "naive":
                print(
                    f"ratio {variant} / naive, all {len(names)} running: "
                    f"{seconds / results['naive']:.2f}"
                )
        print(f"whole run {time.monotonic() - whole:.0f}s; 2-core machine shared with others")


if __name__ == "__main__":
    main()
