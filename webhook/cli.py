"""The ``podhook`` command: serve, worker, run, jobs, hosts, rollouts, approvals and parse."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import click
from werkzeug.datastructures import Headers

from workers.redis_connection import describe as describe_redis
from workers.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from workers.report import JobReport


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(overrides={k: v for k, v in overrides.items() if v is not None})
    except SettingsError as error:
        raise click.UsageError(str(error)) from None


def _setup_logging(verbose: bool = False) -> None:
    from workers.logs import setup_logging

    setup_logging(_settings(), verbose=verbose)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="podhook")
def main() -> None:
    """podhook: registry push webhooks restart the Podman containers that run the pushed image.

    Settings come from PODHOOK_* environment variables and the TOML file named by
    PODHOOK_CONFIG; see docs/operations.md.
    """


@main.command()
@click.option("--bind", help="Address to listen on (default: PODHOOK_BIND or 0.0.0.0:8080).")
@click.option("--workers", "web_workers", type=int, help="gunicorn worker processes.")
def serve(bind: str | None, web_workers: int | None) -> None:
    """Serve the webhook app under gunicorn."""
    settings = _settings(bind=bind, web_workers=web_workers)
    from webhook.app import create_app

    create_app(settings)  # fail here, readably, on bad settings rather than in every worker
    from webhook.serving import gunicorn_options
    from workers.logs import logging_config

    # gunicorn configures logging in its master, and its workers inherit that: handed
    # podhook's configuration, the app's own lines reach the log too (as JSON when asked).
    # gunicorn reads the file again on SIGHUP, so it stays.
    handle, log_config = tempfile.mkstemp(prefix="podhook-serve-logging-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        json.dump(logging_config(settings), file)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        # Threaded workers, a deadline on each request, limits on its head (webhook/serving.py).
        *gunicorn_options(settings),
        "--access-logfile",
        "-",
        "--log-config-json",
        log_config,
        "webhook.app:create_app()",
    ]
    os.execv(sys.executable, argv)


@main.command()
@click.option("--burst", is_flag=True, help="Work the queue until it is empty, then exit.")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes for this host.",
)
@click.option(
    "--host-id", help="This host's id in the fleet (default: PODHOOK_HOST_ID or hostname)."
)
def worker(burst: bool, processes: int, host_id: str | None) -> None:
    """Apply pushes queued for this host: pull and restart the matching units."""
    _setup_logging()
    settings = _settings(host_id=host_id)
    # Pool processes and jobs read their settings again: they must see the same host.
    os.environ["PODHOOK_HOST_ID"] = settings.host_id
    from redis.exceptions import RedisError

    from workers.worker import run_pool, run_worker

    try:
        if processes == 1:
            run_worker(settings, burst=burst)
        else:
            run_pool(settings, processes, burst=burst)
    except RedisError as error:
        raise click.ClickException(f"Redis at {describe_redis(settings)}: {error}") from None


@main.command()
@click.option("--bind", help="Address for the webhook app (default 0.0.0.0:8080).")
def run(bind: str | None) -> None:
    """Run everything for one host: Redis (private, if none is configured), the app, a worker.

    Ctrl-C stops it all.
    """
    from webhook.allinone import run_all

    settings = _settings(bind=bind)
    try:
        sys.exit(run_all(settings))
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option("--source", required=True, help="Webhook source (distribution, harbor, ...).")
@click.option("--header", "headers", multiple=True, help="A request header, 'Name: value'.")
@click.option(
    "--registry", help="Registry host for sources whose payloads name none (zot, Nexus, ...)."
)
@click.argument("payload", type=click.File("rb"))
def parse(source: str, headers: tuple[str, ...], registry: str | None, payload: Any) -> None:
    """Print the push events a webhook payload yields, without queuing anything.

    Prints {"events": [...], "ignored": N}; an event whose payload names no registry host has
    "registry": null unless --registry gives one. Exits 2 with the reason on stderr for a
    payload that cannot be read.
    """
    from webhook.sources import UNKNOWN_REGISTRY, PayloadError, get_source, source_names
    from workers.reference import normalize_registry

    adapter = get_source(source)
    if adapter is None:
        raise click.BadParameter(
            f"unknown source {source!r}; known: {', '.join(source_names())}", param_hint="--source"
        )
    request_headers = Headers()
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{header!r} is not 'Name: value'", param_hint="--header")
        request_headers.add(name.strip(), value.strip())
    try:
        result = adapter.parse(cast(Mapping[str, str], request_headers), payload.read())
    except PayloadError as error:
        click.echo(f"podhook parse: {source} payload: {error}", err=True)
        sys.exit(2)
    events = []
    for event in result.events:
        host: str | None = event.registry
        if host == UNKNOWN_REGISTRY:
            host = normalize_registry(registry) if registry else None
        events.append(
            {
                "registry": host,
                "repository": event.repository,
                "tag": event.tag,
                "digest": event.digest,
            }
        )
    output: dict[str, Any] = {"events": events, "ignored": result.ignored}
    if result.reply is not None:
        output["reply"] = result.reply
    click.echo(json.dumps(output, indent=2))


def _redis(settings: Settings) -> Any:
    from workers.queueing import redis_from_settings

    return redis_from_settings(settings)


JOB_STATES = ["queued", "started", "scheduled", "finished", "failed"]


def parse_since(text: str) -> datetime:
    """A point in time from ``30m``, ``2h``, ``7d`` (that long ago) or an ISO 8601 timestamp.

    Raises click.BadParameter for anything else.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO 8601 time",
            param_hint="--since",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@main.group(invoke_without_command=True)
@click.option("--host", help="Only jobs of this host.")
@click.option("--state", type=click.Choice(JOB_STATES))
@click.option("--image", help="Only pushes whose reference contains this text (app:1.2).")
@click.option("--since", help="Only jobs queued since then: 30m, 2h, 7d or an ISO 8601 time.")
@click.option("--limit", type=int, default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def jobs(
    ctx: click.Context,
    host: str | None,
    state: str | None,
    image: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recent jobs of every host, newest first, with their outcome.

    Subcommands show, retry and cancel act on single jobs.
    """
    if ctx.invoked_subcommand is not None:
        return
    from workers.joblog import list_jobs

    settings = _settings()
    since_time = parse_since(since) if since else None
    records = _with_redis(
        settings,
        lambda r: list_jobs(r, host=host, state=state, image=image, since=since_time, limit=limit),
    )
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    if not records:
        click.echo("no jobs")
        return
    rows = [("JOB", "HOST", "STATE", "IMAGE", "DIGEST", "ENQUEUED", "OUTCOME")]
    for record in records:
        rows.append(
            (
                record.id,
                record.host,
                record.state,
                _subject(record),
                (record.event.get("digest") or "-")[:19],
                record.enqueued_at.strftime("%Y-%m-%d %H:%M:%S") if record.enqueued_at else "-",
                _outcome(record),
            )
        )
    _print_table(rows)


def _reference(event: dict[str, Any]) -> str:
    return f"{event.get('registry')}/{event.get('repository')}:{event.get('tag')}"


def _subject(record: Any) -> str:
    """What a job is about: the pushed reference, or the reconcile of every container."""
    from workers.fleet import is_reconcile_job

    if is_reconcile_job(record):
        return "(reconcile: every labeled container)"
    if record.event:
        return _reference(record.event)
    return record.report.reference if record.report is not None else "-"


def _outcome(record: Any) -> str:
    if record.report is not None:
        counts = record.report.summary
        text = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no containers"
    else:
        text = "-"
    if record.error:
        text += f" ({record.error[:80]})"
    return text


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def jobs_show(job_id: str, as_json: bool) -> None:
    """Show one job: its push, its state and the per-container report."""
    from workers.joblog import find_delivery, get_job

    settings = _settings()
    record = _with_redis(settings, lambda r: get_job(r, job_id))
    if record is None:
        click.echo(f"podhook: no job {job_id!r} (unknown or expired)", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2))
        return
    event = record.event
    delivery = _with_redis(settings, lambda r: find_delivery(r, job_id))
    click.echo(f"job       {record.id}")
    click.echo(f"host      {record.host}")
    click.echo(f"state     {record.state}")
    click.echo(f"push      {_subject(record)}")
    if event:
        click.echo(f"digest    {event.get('digest') or '(not given by the sender)'}")
        click.echo(
            f"source    {event.get('source') or '-'} delivery {event.get('delivery') or '-'}"
        )
    if delivery:
        click.echo(
            f"received  {_clock(delivery.get('received_at'))} at endpoint "
            f"{delivery.get('endpoint')}, queued {_clock(delivery.get('queued_at'))}"
        )
    report = record.report
    if report is not None:
        click.echo(f"ran       {_clock(report.started_at)} to {_clock(report.finished_at)}")
    if record.error:
        click.echo(f"error     {record.error}")
    if report is None or not report.rows:
        click.echo(
            "no containers of this host run that image" if report is not None else "no report yet"
        )
        return
    rows = [("CONTAINER", "UNIT", "STATE", "OLD", "NEW", "TIMINGS", "REASON")]
    for row in report.rows:
        timings = " ".join(f"{step}+{sec:.1f}s" for step, sec in row.timings.items())
        rows.append(
            (
                row.container_name,
                row.unit or "-",
                row.state.value,
                (row.old_image or "-")[:12],
                (row.new_image or "-")[:12],
                timings or "-",
                row.reason,
            )
        )
    _print_table(rows)


def _clock(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


@jobs.command("retry")
@click.argument("job_id", required=False)
@click.option("--all-failed", is_flag=True, help="Retry every failed job (of --host, or all).")
@click.option("--host", help="With --all-failed: only this host's failed jobs.")
def jobs_retry(job_id: str | None, all_failed: bool, host: str | None) -> None:
    """Queue a failed job again (or, with --all-failed, every failed job)."""
    from workers.joblog import JobActionError, retry_failed, retry_job

    if bool(job_id) == all_failed:
        raise click.UsageError("give a JOB_ID or --all-failed")
    settings = _settings()
    if all_failed:
        retried = _with_redis(settings, lambda r: retry_failed(r, host))
        click.echo(f"retried {len(retried)} failed job(s)")
        for retried_id in retried:
            click.echo(f"  {retried_id}")
        return
    try:
        record = _with_redis(settings, lambda r: retry_job(r, str(job_id)))
    except JobActionError as error:
        click.echo(f"podhook: {error}", err=True)
        sys.exit(1)
    click.echo(f"job {record.id} is {record.state} again on host {record.host}")


@jobs.command("cancel")
@click.argument("job_id")
def jobs_cancel(job_id: str) -> None:
    """Cancel a job that is still waiting (queued or scheduled for a retry)."""
    from workers.joblog import JobActionError, cancel_job

    settings = _settings()
    try:
        record = _with_redis(settings, lambda r: cancel_job(r, job_id))
    except JobActionError as error:
        click.echo(f"podhook: {error}", err=True)
        sys.exit(1)
    click.echo(f"job {record.id} is {record.state}")


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def hosts(ctx: click.Context, as_json: bool) -> None:
    """List the registered hosts: heartbeat age, queue depth, workers and what they run.

    Exits 1 when a host's workers have missed several heartbeats. `hosts forget HOST` stops
    queuing pushes for a host that is gone.
    """
    if ctx.invoked_subcommand is not None:
        return
    from workers.fleet import describe_hosts

    settings = _settings()
    found = _with_redis(
        settings, lambda r: describe_hosts(r, stale_after=settings.host_stale_after)
    )
    if as_json:
        click.echo(json.dumps([host.to_dict() for host in found], indent=2))
    elif not found:
        click.echo("no hosts registered; start `podhook worker` on each host")
    else:
        _print_hosts(found)
        for host in found:
            for container in host.containers or []:
                click.echo(
                    f"  {host.host}: {container['name']} ({container.get('unit') or 'no unit'}) "
                    f"runs {container['image']} [{container['image_id'][:12]}]"
                )
            if host.inventory_error:
                click.echo(f"  {host.host}: Podman did not answer: {host.inventory_error}")
    sys.exit(1 if any(host.stale for host in found) else 0)


@hosts.command("forget")
@click.argument("host")
def hosts_forget(host: str) -> None:
    """Forget HOST (a host that is retired): its registration, inventory, queue and jobs.

    A worker of that host that starts again registers it again.
    """
    from workers.gates import settings_now
    from workers.hosts import forget_host
    from workers.rollouts import forget_host_in_rollouts

    settings = _settings()
    known = _with_redis(settings, lambda r: forget_host(r, host))
    held = _with_redis(
        settings, lambda r: forget_host_in_rollouts(r, settings, host, settings_now(settings))
    )
    if held:
        click.echo(f"took {host} out of {held} rollout(s) in flight")
    if not known:
        click.echo(f"podhook: host {host!r} is not registered", err=True)
        sys.exit(1)
    click.echo(f"forgot host {host}: its queue and jobs are removed, pushes no longer reach it")


@main.group(invoke_without_command=True)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def rollouts(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List rollouts (pushes going out wave by wave), newest first.

    Subcommands show one, and pause, resume, abort or promote it; each takes a rollout id or
    a reference (its newest rollout). See docs/rollouts.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    from workers.rollouts import list_rollouts

    found = _with_redis(_settings(), lambda r: list_rollouts(r, limit))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in found], indent=2))
        return
    if not found:
        click.echo("no rollouts")
        return
    rows = [("ROLLOUT", "IMAGE", "DIGEST", "STATE", "WAVE", "STARTED")]
    for rollout in found:
        wave = rollout.waves[rollout.wave]
        rows.append(
            (
                rollout.id,
                rollout.reference,
                rollout.digest[:19],
                rollout.state.value,
                f"{rollout.wave + 1}/{len(rollout.waves)} {wave.name}: {wave.state()}",
                _clock(rollout.created_at),
            )
        )
    _print_table(rows)


@rollouts.command("show")
@click.argument("rollout")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def rollouts_show(rollout: str, as_json: bool) -> None:
    """Show a rollout: its waves, their hosts and states, and its history."""
    from workers.rollouts import get_rollout

    found = _with_redis(_settings(), lambda r: get_rollout(r, rollout))
    if found is None:
        click.echo(f"podhook: no rollout {rollout!r} (give a rollout id or a reference)", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2))
        return
    click.echo(format_rollout(found))


def format_rollout(rollout: Any) -> str:
    """A rollout as `podhook rollouts show` prints it."""
    lines = [
        f"rollout   {rollout.id}",
        f"image     {rollout.reference}",
        f"digest    {rollout.digest}",
        f"state     {rollout.state.value}" + (f": {rollout.reason}" if rollout.reason else ""),
        f"policy    {rollout.policy} (soak {rollout.soak:g}s)",
        "",
    ]
    table = [("WAVE", "HOSTS", "STATE", "HOST", "HOST STATE", "REASON")]
    for number, wave in enumerate(rollout.waves, start=1):
        state = wave.state()
        if state == "soaking" and wave.soak_until:
            state += f" until {_clock(wave.soak_until)}"
        hosts = sorted(wave.hosts.items()) or [("-", None)]
        for index, (host, record) in enumerate(hosts):
            first = index == 0
            table.append(
                (
                    f"{number} {wave.name}" if first else "",
                    wave.selector if first else "",
                    state if first else "",
                    host,
                    record.state.value if record else "-",
                    (record.reason if record else "") or "",
                )
            )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines.append("")
    lines += [f"{_clock(step.at)}  {step.text}" for step in rollout.steps]
    return "\n".join(lines)


def _control_rollout(action: str, rollout: str) -> None:
    from workers import rollouts as rollout_ops
    from workers.gates import settings_now

    settings = _settings()
    act = getattr(rollout_ops, action)
    try:
        changed = _with_redis(settings, lambda r: act(r, settings, rollout, settings_now(settings)))
    except rollout_ops.RolloutError as error:
        click.echo(f"podhook: {error}", err=True)
        sys.exit(1)
    click.echo(f"rollout {changed.id}: {changed.steps[-1].text}; now {changed.state.value}")


@rollouts.command("pause")
@click.argument("rollout")
def rollouts_pause(rollout: str) -> None:
    """Open no further wave until resumed (the open wave's hosts finish)."""
    _control_rollout("pause", rollout)


@rollouts.command("resume")
@click.argument("rollout")
def rollouts_resume(rollout: str) -> None:
    """Go on with a paused rollout, or retry a halted one's failed hosts."""
    _control_rollout("resume", rollout)


@rollouts.command("abort")
@click.argument("rollout")
def rollouts_abort(rollout: str) -> None:
    """End a rollout: hosts not updated yet stay as they are (updated ones keep the image)."""
    _control_rollout("abort", rollout)


@rollouts.command("promote")
@click.argument("rollout")
def rollouts_promote(rollout: str) -> None:
    """Skip the rest of the open wave's soak: the next wave starts now."""
    _control_rollout("promote", rollout)


@main.command()
@click.argument("reference")
@click.option("--digest", help="The digest to approve (default: what pending updates wait for).")
@click.option("--host", help="Approve on this host only (default: every host).")
def approve(reference: str, digest: str | None, host: str | None) -> None:
    """Approve the pending update of REFERENCE (containers labeled io.podhook.approval=required)
    and let the hosts that wait for it update now."""
    from workers.approvals import NothingToApproveError, approve_updates
    from workers.queueing import JobOptions

    settings = _settings()
    try:
        approved = _with_redis(
            settings,
            lambda r: approve_updates(
                r, reference, digest, host, JobOptions.from_settings(settings)
            ),
        )
    except NothingToApproveError as error:
        click.echo(f"podhook: {error}; `podhook approvals` lists what waits", err=True)
        sys.exit(1)
    for item in approved:
        click.echo(f"approved {reference}@{item.digest} on {item.host}: it updates now")
    if not approved:
        click.echo(f"approved {reference}@{digest} for the hosts that will ask")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def approvals(as_json: bool) -> None:
    """List the updates that wait for an approval."""
    from dataclasses import asdict

    from workers.approvals import pending_approvals

    found = _with_redis(_settings(), pending_approvals)
    if as_json:
        click.echo(json.dumps([asdict(p) for p in found], indent=2))
        return
    if not found:
        click.echo("no update waits for an approval")
        return
    rows = [("IMAGE", "DIGEST", "HOST", "CONTAINERS", "SINCE")]
    for item in found:
        rows.append(
            (
                item.reference,
                item.digest[:19],
                item.host,
                ",".join(item.containers),
                _clock(item.since),
            )
        )
    _print_table(rows)


def _print_hosts(found: list[Any]) -> None:
    rows = [("HOST", "HEARTBEAT", "QUEUED", "WORKERS", "FAILED", "CONTAINERS")]
    for host in found:
        age = f"{host.heartbeat_age:.0f}s ago" + (" (stale)" if host.stale else "")
        count = "-" if host.containers is None else str(len(host.containers))
        rows.append((host.host, age, str(host.queued), str(host.workers), str(host.failed), count))
    _print_table(rows)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--recent",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="How many recent updates and failures to show.",
)
def status(as_json: bool, recent: int) -> None:
    """One screen: Redis, hosts, their problems, queue depths, the last updates and failures.

    A problem is a container whose latest report (a reconcile, a push) failed or rolled back,
    a misconfigured one for instance, until a later report for it does not. Exits 0 when every
    host is alive and has no problem, 1 otherwise (and 1 when Redis cannot be reached).
    """
    from workers.fleet import describe_fleet

    settings = _settings()
    fleet = _with_redis(
        settings,
        lambda r: describe_fleet(r, stale_after=settings.host_stale_after, recent=recent),
    )
    healthy = all(host.healthy for host in fleet.hosts)
    if as_json:
        click.echo(json.dumps({**fleet.to_dict(), "healthy": healthy}, indent=2))
        sys.exit(0 if healthy else 1)
    click.echo(f"redis     {fleet.redis_version}, {fleet.redis_used_memory_human} used")
    if fleet.hosts:
        _print_hosts(fleet.hosts)
    else:
        click.echo("hosts     none registered; start `podhook worker` on each host")
    orphans = {
        q: n
        for q, n in fleet.queues.items()
        if q.removeprefix("podhook-") not in {h.host for h in fleet.hosts}
    }
    for queue, depth in sorted(orphans.items()):
        click.echo(f"queue     {queue}: {depth} waiting, no registered host")
    click.echo("\nproblems")
    problems = [problem for host in fleet.hosts for problem in host.problems]
    stale = [host for host in fleet.hosts if host.stale]
    if not problems and not stale:
        click.echo("  none")
    for host in stale:
        click.echo(f"  {host.host}: stale, no heartbeat for {host.heartbeat_age:.0f}s")
    for problem in problems:
        click.echo(
            f"  {problem.host}: {problem.container} ({problem.unit or 'no unit'}) "
            f"{problem.state} in {problem.kind} {problem.job or '-'} at {_clock(problem.time)}: "
            f"{problem.reason}"
        )
    click.echo("\nrecent updates")
    if not fleet.updates:
        click.echo("  none")
    for update in fleet.updates:
        stamp = _clock(update.received_at or update.time)
        for job in update.jobs:
            states = (
                ", ".join(
                    sorted(
                        {row.state.value for outcome in job.outcomes for row in outcome.report.rows}
                    )
                )
                or job.state
                or "expired"
            )
            click.echo(f"  {stamp} {job.reference} on {job.host}: {states}")
    click.echo("\nrecent failures")
    if not fleet.failures:
        click.echo("  none")
    for failure in fleet.failures:
        click.echo(
            f"  {_clock(failure.time)} {failure.reference} on {failure.host}: {failure.container} "
            f"({failure.unit or '-'}) {failure.state}: {failure.reason}"
        )
    sys.exit(0 if healthy else 1)


@main.command()
@click.option("--dry-run", is_flag=True, help="Check only: rows behind are 'pending'.")
@click.option(
    "--rollback/--no-rollback",
    default=None,
    help="Roll back failed units (default: PODHOOK_ROLLBACK, of each host with --host/--all).",
)
@click.option(
    "--format",
    "format_",
    default="table",
    show_default=True,
    help="table, json, or a Go template such as '{{.Unit}},{{.Image}},{{.Updated}}'.",
)
@click.option("--host", "hosts_", multiple=True, help="Reconcile HOST through its queue.")
@click.option("--all", "all_hosts", is_flag=True, help="Reconcile every live host via queues.")
@click.option("--timeout", type=float, default=1800, show_default=True, help="Seconds to wait.")
def reconcile(
    dry_run: bool,
    rollback: bool | None,
    format_: str,
    hosts_: tuple[str, ...],
    all_hosts: bool,
    timeout: float,
) -> None:
    """Check every labeled container against its registry and update those behind, as
    `podman auto-update` does: one manifest HEAD per distinct reference, a pull only when the
    digest differs, a restart per unit, rollback on failure.

    Without --host or --all it runs here, on this host's Podman socket and systemd bus (no
    Redis needed). With them it goes through the hosts' queues (a plain reconcile joins one
    already waiting); a host that is not registered or has stopped beating is refused, and
    --all leaves out stale hosts. Exits 0, or 125 when any row failed, printing the errors.
    """
    from workers.autoupdate_format import FormatError, podman_row, render
    from workers.report import UpdateState

    settings = _settings(dry_run=dry_run or None, rollback=rollback)
    _setup_logging()
    if hosts_ or all_hosts:
        reports = _reconcile_through_queues(
            settings, list(hosts_), all_hosts, dry_run or None, rollback, timeout
        )
    else:
        reports = [_reconcile_here(settings)]
    rows = [
        podman_row(row.to_dict(), report.host if (hosts_ or all_hosts) else None)
        for report in reports
        for row in sorted(report.rows, key=lambda r: (r.unit or "", r.container_name))
    ]
    try:
        text = render(rows, format_) if rows else ""
    except FormatError as error:
        raise click.UsageError(str(error)) from None
    click.echo(text, nl=False)
    errors = [f"{report.host}: {report.error}" for report in reports if report.error] + [
        f"{row.container_name}: {row.reason}"
        for report in reports
        for row in report.rows
        if row.state is UpdateState.FAILED
    ]
    if errors:
        if len(errors) == 1:
            click.echo(f"Error: {errors[0]}", err=True)
        else:
            click.echo(f"Error: {len(errors)} errors occurred:", err=True)
            for line in errors:
                click.echo(f"\t* {line}", err=True)
        sys.exit(125)


def _reconcile_here(settings: Settings) -> JobReport:
    """Reconcile this host in this process, with Redis locks when Redis answers."""
    import contextlib
    import time

    from workers.jobs import build_updater, registry_lookup
    from workers.podman_runtime import ContainerRuntimeError, PodmanRuntime
    from workers.report import EVERY_REFERENCE, JobReport
    from workers.systemd_units import UnitError

    class _LocalLocks:
        @contextlib.contextmanager
        def hold(self, unit: str) -> Any:
            yield

    locks: Any = _LocalLocks()
    if settings.redis_url or settings.redis_sentinels:
        from redis.exceptions import RedisError

        from workers.locks import RedisUnitLocks

        with contextlib.suppress(RedisError):
            redis = _redis(settings)
            redis.ping()
            locks = RedisUnitLocks(redis, settings.host_id, ttl=settings.job_timeout)
    begun = JobReport(
        host=settings.host_id, kind="reconcile", reference=EVERY_REFERENCE, started_at=time.time()
    )
    runtime = PodmanRuntime(settings.podman_url)
    try:
        updater = build_updater(settings, runtime, locks)
        outcome = updater.reconcile(registry_lookup(settings))
    except (ContainerRuntimeError, UnitError) as error:
        return replace(begun, finished_at=time.time(), error=str(error))
    finally:
        runtime.close()
    return replace(begun, finished_at=time.time(), rows=tuple(outcome.rows))


def _reconcile_through_queues(
    settings: Settings,
    hosts: list[str],
    all_hosts: bool,
    dry_run: bool | None,
    rollback: bool | None,
    timeout: float,
) -> list[JobReport]:
    """Queue a reconcile on each host's queue and wait for them, with a progress line each."""
    import time

    from workers.fleet import HostSelectionError, UnknownHostError, request_reconciles
    from workers.joblog import get_job
    from workers.queueing import JobOptions
    from workers.report import EVERY_REFERENCE, JobReport

    def unfinished(host: str, job_id: str, error: str) -> JobReport:
        return JobReport(
            host=host, kind="reconcile", reference=EVERY_REFERENCE, job=job_id, error=error
        )

    redis = _redis(settings)
    try:
        requested = _with_redis(
            settings,
            lambda r: request_reconciles(
                r,
                None if all_hosts else hosts,
                stale_after=settings.host_stale_after,
                options=JobOptions.from_settings(settings),
                dry_run=dry_run,
                rollback=rollback,
            ),
        )
    except UnknownHostError as error:
        raise click.UsageError(f"{error} (see `podhook hosts`)") from None
    except HostSelectionError as error:
        raise click.ClickException(str(error)) from None
    for host, reason in requested.skipped.items():
        click.echo(f"{host}: left out, {reason}", err=True)
    queued = {job.host: job.job_id for job in requested.queued}
    hosts = list(queued)
    reports: dict[str, JobReport] = {}
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    while len(reports) < len(queued):
        for host, job_id in queued.items():
            if host in reports:
                continue
            record = get_job(redis, job_id)
            state = record.state if record is not None else "gone"
            if last.get(host) != state:
                click.echo(f"{host}: reconcile {job_id} {state}", err=True)
                last[host] = state
            if state in ("finished", "failed", "stopped", "canceled", "gone"):
                if record is not None and record.report is not None:
                    reports[host] = replace(record.report, host=host)
                else:
                    why = (record.error if record is not None else None) or f"job {state}"
                    reports[host] = unfinished(host, job_id, why)
        if len(reports) < len(queued):
            if time.monotonic() > deadline:
                for host, job_id in queued.items():
                    reports.setdefault(host, unfinished(host, job_id, "timed out waiting"))
                break
            time.sleep(0.5)
    return [reports[host] for host in hosts]


def _with_redis(settings: Settings, action: Any) -> Any:
    from redis.exceptions import RedisError

    try:
        return action(_redis(settings))
    except RedisError as error:
        raise click.ClickException(f"Redis at {describe_redis(settings)}: {error}") from None


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


if __name__ == "__main__":  # pragma: no cover
    main()
