"""Routing and convergence work on a real Redis: which hosts a push reaches, one job per host
and reference that hints join, the desired state a job reads, hosts forgotten for good."""

import subprocess
import sys
import time

import pytest
from rq import SimpleWorker, Worker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

import workers.jobs
from workers.desired import get_desired, record_rollback, was_rolled_back
from workers.events import make_event
from workers.hosts import forget_host, get_hosts, register_host
from workers.inventory import get_inventory, publish_inventory
from workers.locks import LockTimeoutError, RedisUnitLocks
from workers.queueing import (
    RECONCILE_TIMER_KEY,
    JobOptions,
    NoHostsError,
    QueuedJob,
    commit_convergence,
    delivery_key,
    finish_work,
    get_queue,
    is_delivery_seen,
    is_work_running,
    job_liveness,
    prepare_convergence,
    reconcile_due,
    reconcile_soon,
    remember_delivery,
    request_convergence,
    start_work,
    work_key,
)
from workers.report import JobReport
from workers.routing import dispatch_push, dispatch_pushes, route_push
from workers.update import UpdateOutcome

REGISTRY = "registry.example.com"
REFERENCE = f"{REGISTRY}/team/app:1"
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def event(digest=D1, tag="1", source="test"):
    return make_event(REGISTRY, "team/app", tag, digest, source=source)


def runs(redis, host, *references, now=None):
    """Publish an inventory for ``host`` whose containers run ``references``."""
    containers = [
        {"name": f"c{i}", "image": ref, "reference": ref, "image_id": "x", "unit": "u.service"}
        for i, ref in enumerate(references)
    ]
    publish_inventory(
        redis, host, {"collected_at": time.time() if now is None else now, "containers": containers}
    )


def test_hosts_register_with_heartbeat(redis):
    register_host(redis, "a", now=100.0)
    register_host(redis, "b", now=200.0)
    register_host(redis, "a", now=300.0)
    assert get_hosts(redis) == {"a": 300.0, "b": 200.0}


def test_no_hosts_raises_and_records_nothing(redis):
    with pytest.raises(NoHostsError):
        dispatch_push(redis, event())
    assert get_desired(redis, REFERENCE) is None


def test_a_push_reaches_the_hosts_that_run_it_and_those_of_unknown_inventory(redis):
    for host in ("runs-it", "runs-other", "unknown", "old-inventory", "stale"):
        register_host(redis, host)
    runs(redis, "runs-it", REFERENCE)
    runs(redis, "runs-other", f"{REGISTRY}/team/other:1")
    runs(redis, "old-inventory", f"{REGISTRY}/team/other:1", now=time.time() - 600)
    runs(redis, "stale", REFERENCE)
    register_host(redis, "stale", now=time.time() - 1000)
    routed = route_push(redis, REFERENCE, stale_after=150, inventory_max_age=120)
    assert routed == ["old-inventory", "runs-it", "unknown"]
    queued = dispatch_push(redis, event())
    assert sorted(job.host for job in queued) == routed
    assert len(get_queue(redis, "runs-other")) == 0 and len(get_queue(redis, "stale")) == 0


def test_an_inventory_that_drops_a_reference_stops_its_pushes(redis):
    register_host(redis, "a")
    runs(redis, "a", REFERENCE)
    assert route_push(redis, REFERENCE, stale_after=150, inventory_max_age=120) == ["a"]
    runs(redis, "a")
    assert route_push(redis, REFERENCE, stale_after=150, inventory_max_age=120) == []
    register_host(redis, "b")
    assert [job.host for job in dispatch_push(redis, event())] == ["b"]  # b: not known yet
    assert get_desired(redis, REFERENCE).digest == D1  # recorded even where no host runs it


def test_one_of_a_thousand_hosts_runs_the_image_one_job_is_queued(redis):
    pipe = redis.pipeline(transaction=False)
    for index in range(1000):
        pipe.zadd("podhook:hosts", {f"h{index}": time.time()})
    pipe.execute()
    for index in range(1000):
        runs(redis, f"h{index}", f"{REGISTRY}/team/app-{index}:1")
    runs(redis, "h7", REFERENCE)
    queued = dispatch_push(redis, event())
    assert [(job.host, job.duplicate) for job in queued] == [("h7", False)]


def test_pushes_join_the_waiting_job_and_the_desired_state_is_the_last(redis):
    register_host(redis, "a")
    [first] = dispatch_push(redis, event(D1))
    [second] = dispatch_push(redis, event(None, source="dockerhub"))  # digest-less source
    [third] = dispatch_push(redis, event(D1))  # back to D1: not a duplicate to drop
    assert not first.duplicate and second.duplicate and third.duplicate
    assert first.job_id == second.job_id == third.job_id
    assert get_queue(redis, "a").get_job_ids() == [first.job_id]
    desired = get_desired(redis, REFERENCE)
    assert (desired.digest, desired.generation) == (D1, 3)


def test_the_job_carries_host_reference_retries_and_ttl(redis):
    register_host(redis, "a")
    [queued] = dispatch_push(redis, event(), JobOptions(retries=2, result_ttl=1234))
    job = get_queue(redis, "a").fetch_job(queued.job_id)
    assert job.func_name == "workers.jobs.converge"
    assert list(job.args) == ["a", REFERENCE]
    assert job.retries_left == 2 and job.result_ttl == 1234
    assert job.meta["host"] == "a" and job.meta["event"]["digest"] == D1


def stored(redis, job_id, host):
    """A job's hash, its time to live, its host's queue and RQ's set of queues."""
    return (
        redis.hgetall(Job.key_for(job_id)),
        redis.ttl(Job.key_for(job_id)),
        redis.lrange(get_queue(redis, host).key, 0, -1),
        redis.smembers("rq:queues"),
    )


def test_a_job_is_stored_with_exactly_the_commands_rq_gave(redis):
    register_host(redis, "a")
    options = JobOptions(retries=2, result_ttl=1234)
    prepared = prepare_convergence(redis, "a", REFERENCE, options, hint=event().to_dict())
    [queued] = commit_convergence(redis, [prepared], options)
    assert queued == QueuedJob("a", prepared.job_id, duplicate=False)
    through_the_script = stored(redis, prepared.job_id, "a")
    redis.flushall()
    pipe = redis.pipeline(transaction=True)
    for command in prepared.commands:
        pipe.execute_command(*command)
    pipe.execute()
    assert stored(redis, prepared.job_id, "a") == through_the_script
    assert through_the_script[0][b"status"] == b"queued"


def test_a_job_prepared_while_another_was_queued_joins_it(redis):
    register_host(redis, "a")
    late = prepare_convergence(redis, "a", REFERENCE)  # decided "new", not stored yet
    first = request_convergence(redis, "a", REFERENCE)  # another delivery, meanwhile
    [joined] = commit_convergence(redis, [late])
    assert joined == QueuedJob("a", first.job_id, duplicate=True)
    assert get_queue(redis, "a").get_job_ids() == [first.job_id]
    assert not redis.exists(Job.key_for(late.job_id))


def test_two_pushes_of_one_reference_in_one_delivery_make_one_job(redis):
    register_host(redis, "a")
    dispatch = dispatch_pushes(redis, [event(D1), event(D2)])
    [[first], [second]] = dispatch.jobs
    assert not first.duplicate and second == QueuedJob("a", first.job_id, duplicate=True)
    assert get_queue(redis, "a").get_job_ids() == [first.job_id]
    assert get_desired(redis, REFERENCE).digest == D2


def test_a_delivery_seen_before_records_nothing(redis):
    register_host(redis, "a")
    remember_delivery(redis, "acr", "d-1")
    dispatch = dispatch_pushes(redis, [event()], seen_key=delivery_key("acr", "d-1"))
    assert dispatch.duplicate and dispatch.jobs == []
    assert get_desired(redis, REFERENCE) is None and len(get_queue(redis, "a")) == 0


def taken_by_worker(redis, job_id, worker="w1", alive=True):
    """What RQ records when a worker takes a job: the job started, by a worker that beats."""
    redis.hset(Job.key_for(job_id), mapping={"status": "started", "worker_name": worker})
    if alive:
        redis.hset(Worker.redis_worker_namespace_prefix + worker, "state", "busy")


def test_a_hint_for_a_running_job_makes_it_look_again_exactly_once(redis):
    register_host(redis, "a")
    [queued] = dispatch_push(redis, event(D1))
    taken_by_worker(redis, queued.job_id)
    assert start_work(redis, "a", REFERENCE, queued.job_id, ttl=60)
    [during] = dispatch_push(redis, event(D2))
    assert during.duplicate and during.job_id == queued.job_id
    assert len(get_queue(redis, "a")) == 1  # nothing new queued: the running job looks again
    assert finish_work(redis, "a", REFERENCE, queued.job_id, retrying=False) is True
    assert finish_work(redis, "a", REFERENCE, queued.job_id, retrying=False) is False
    assert not redis.exists(work_key("a", REFERENCE))
    [after] = dispatch_push(redis, event(D2))
    assert not after.duplicate and after.job_id != queued.job_id


def test_a_job_waiting_for_its_retry_is_joined(redis):
    register_host(redis, "a")
    [queued] = dispatch_push(redis, event(D1))
    start_work(redis, "a", REFERENCE, queued.job_id, ttl=60)
    assert finish_work(redis, "a", REFERENCE, queued.job_id, retrying=True) is False
    [again] = dispatch_push(redis, event(D2))
    assert again.duplicate and again.job_id == queued.job_id


def test_a_job_whose_worker_died_holds_the_work_no_longer(redis):
    register_host(redis, "a")
    [queued] = dispatch_push(redis, event(D1))
    taken_by_worker(redis, queued.job_id, worker="gone", alive=False)  # SIGKILLed, key expired
    start_work(redis, "a", REFERENCE, queued.job_id, ttl=600)
    assert job_liveness(redis, queued.job_id) == "gone"
    assert not is_work_running(redis, "a", REFERENCE)
    [after] = dispatch_push(redis, event(D2))
    assert not after.duplicate and after.job_id != queued.job_id


def test_a_job_whose_work_horse_died_and_waits_for_its_retry_is_joined(redis):
    register_host(redis, "a")
    [queued] = dispatch_push(redis, event(D1))
    taken_by_worker(redis, queued.job_id)
    start_work(redis, "a", REFERENCE, queued.job_id, ttl=600)
    redis.hset(Job.key_for(queued.job_id), "status", "scheduled")  # RQ scheduled the retry
    assert job_liveness(redis, queued.job_id) == "pending"
    [after] = dispatch_push(redis, event(D2))
    assert after.duplicate and after.job_id == queued.job_id


def test_a_unit_lock_held_by_a_dead_job_is_broken_at_once(redis):
    alive = {"live-job"}
    locks = {
        name: RedisUnitLocks(
            redis, "a", ttl=600, wait=0.5, holder=name, holder_alive=lambda j: j in alive
        )
        for name in ("live-job", "dead-job", "next-job")
    }
    with (
        locks["live-job"].hold("web.service"),
        pytest.raises(LockTimeoutError),  # a live holder is waited for
        locks["next-job"].hold("web.service"),
    ):
        pass
    assert not redis.exists(locks["next-job"].key("web.service"))
    dying = locks["dead-job"].hold("web.service")
    dying.__enter__()  # taken, then its process dies without releasing it
    assert locks["next-job"].holder_of("web.service") == "dead-job"
    with locks["next-job"].hold("web.service"):  # within its 0.5 s wait, not the 600 s TTL
        assert locks["next-job"].holder_of("web.service") == "next-job"


def test_twenty_pushes_in_a_second_make_at_most_two_runs(redis):
    register_host(redis, "a")
    digests = [f"sha256:{index:064x}" for index in range(20)]
    [first] = dispatch_push(redis, event(digests[0]))
    taken_by_worker(redis, first.job_id)
    start_work(redis, "a", REFERENCE, first.job_id, ttl=60)
    seen = [get_desired(redis, REFERENCE).digest]
    for digest in digests[1:]:
        assert dispatch_push(redis, event(digest))[0].job_id == first.job_id
    runs_ = 1
    while finish_work(redis, "a", REFERENCE, first.job_id, retrying=False):
        runs_ += 1
        seen.append(get_desired(redis, REFERENCE).digest)
    assert runs_ == 2 and seen[-1] == digests[-1]


def test_forgetting_a_host_removes_its_queue_jobs_inventory_and_work(redis):
    register_host(redis, "gone")
    runs(redis, "gone", REFERENCE)
    [queued] = dispatch_push(redis, event())
    assert forget_host(redis, "gone") and not forget_host(redis, "gone")
    assert "gone" not in get_hosts(redis)
    assert get_inventory(redis, "gone") is None
    assert len(get_queue(redis, "gone")) == 0
    assert get_queue(redis, "gone").fetch_job(queued.job_id) is None
    assert not redis.exists(work_key("gone", REFERENCE))
    assert not redis.exists(f"podhook:ref-hosts:{REFERENCE}")


def test_delivery_ids_are_remembered_per_endpoint(redis):
    assert not is_delivery_seen(redis, "github", "abc")
    remember_delivery(redis, "github", "abc")
    assert is_delivery_seen(redis, "github", "abc")
    assert not is_delivery_seen(redis, "gitea", "abc")
    assert 0 < redis.ttl("podhook:delivery:github:abc") <= 3 * 24 * 3600


def test_a_job_status_is_rqs(redis):
    register_host(redis, "a")
    [queued] = dispatch_push(redis, event())
    assert get_queue(redis, "a").fetch_job(queued.job_id).get_status() == JobStatus.QUEUED


def work_in_process(redis, host):
    SimpleWorker([get_queue(redis, host)], connection=redis, serializer=JSONSerializer).work(
        burst=True
    )


def test_a_job_that_crashes_after_a_hint_came_releases_its_work(redis, monkeypatch):
    register_host(redis, "a")
    dispatch_push(redis, event(D1), JobOptions(retries=0))

    def crash(*args, **kwargs):
        dispatch_push(redis, event(D2))  # a push while the job works: marks it "again"
        raise RuntimeError("the job broke")

    monkeypatch.setattr(workers.jobs, "_run", crash)
    work_in_process(redis, "a")
    assert not redis.exists(work_key("a", REFERENCE))
    [after] = dispatch_push(redis, event(D2))
    assert not after.duplicate  # a new job: the next push is not swallowed by a dead one


def test_a_job_under_a_stream_of_pushes_hands_the_rest_to_a_new_job(redis, monkeypatch):
    register_host(redis, "a")
    dispatch_push(redis, event(D1), JobOptions(retries=0))
    looks = []

    def look(*args, **kwargs):
        looks.append(1)
        if len(looks) <= workers.jobs.MAX_LOOKS:
            dispatch_push(redis, event(f"sha256:{len(looks):064x}"))
        return UpdateOutcome(), JobReport(host="a", kind="converge", reference=REFERENCE)

    monkeypatch.setattr(workers.jobs, "_run", look)
    work_in_process(redis, "a")
    # The first job looked MAX_LOOKS times, then queued a job that took the last push.
    assert len(looks) == workers.jobs.MAX_LOOKS + 1
    assert len(get_queue(redis, "a").finished_job_registry) == 2
    assert not redis.exists(work_key("a", REFERENCE))


def test_a_rolled_back_push_is_remembered_per_host_until_the_next_push(redis):
    register_host(redis, "h1")
    dispatch_push(redis, event())
    failed = get_desired(redis, REFERENCE)
    record_rollback(redis, "h1", failed)
    assert was_rolled_back(redis, "h1", failed)
    assert not was_rolled_back(redis, "h2", failed)  # another host did not fail on it
    dispatch_push(redis, event())  # the same digest pushed again: the next push decides
    assert not was_rolled_back(redis, "h1", get_desired(redis, REFERENCE))


def test_a_job_that_gave_up_brings_the_next_reconcile_forward(redis):
    assert reconcile_due(redis, "a", 3600)  # times the next one an hour away
    assert redis.ttl(RECONCILE_TIMER_KEY.format(host="a")) > 3000
    reconcile_soon(redis, "a", 3600)
    assert 0 < redis.ttl(RECONCILE_TIMER_KEY.format(host="a")) <= 120
    reconcile_soon(redis, "b", 0)  # reconciles off: nothing to bring forward
    assert not redis.exists(RECONCILE_TIMER_KEY.format(host="b"))


def test_a_unit_lock_whose_holding_process_died_is_broken_before_rq_notices(redis, redis_url):
    # The job still looks alive to RQ (its worker's key lives until its TTL), but the process
    # that took the lock, in this PID namespace, is gone: a SIGKILLed work-horse.
    script = (
        "import os, sys; from redis import Redis; from workers.locks import RedisUnitLocks\n"
        "locks = RedisUnitLocks(Redis.from_url(sys.argv[1]), 'a', ttl=600, holder='killed')\n"
        "held = locks.hold('web.service'); held.__enter__(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, redis_url], check=True, timeout=30)
    locks = RedisUnitLocks(
        redis, "a", ttl=600, wait=0.5, holder="next", holder_alive=lambda job: True
    )
    assert locks.holder_of("web.service") == "killed"
    with locks.hold("web.service"):  # within its 0.5 s wait, not the 600 s TTL
        assert locks.holder_of("web.service") == "next"
