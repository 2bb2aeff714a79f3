"""Queuing for the fleet on a real Redis: one job per host, stable ids, digest-less windows."""

import pytest
from rq.job import JobStatus

from workers.events import make_event
from workers.queueing import (
    NoHostsError,
    enqueue_push,
    forget_host,
    get_hosts,
    get_queue,
    is_delivery_seen,
    job_id_for,
    register_host,
    remember_delivery,
)

DIGEST = "sha256:" + "e" * 64


def event(digest=DIGEST, tag="1"):
    return make_event("registry.example.com", "team/app", tag, digest, source="test")


def test_hosts_register_with_heartbeat_and_can_be_forgotten(redis):
    register_host(redis, "a", now=100.0)
    register_host(redis, "b", now=200.0)
    register_host(redis, "a", now=300.0)
    assert get_hosts(redis) == {"a": 300.0, "b": 200.0}
    assert forget_host(redis, "a") and not forget_host(redis, "a")
    assert get_hosts(redis) == {"b": 200.0}


def test_no_hosts_raises(redis):
    with pytest.raises(NoHostsError):
        enqueue_push(redis, event())


def test_job_ids_are_stable_per_host_reference_and_digest():
    assert job_id_for("a", event()) == job_id_for("a", event())
    assert job_id_for("a", event()) != job_id_for("b", event())
    assert job_id_for("a", event()) != job_id_for("a", event(tag="2"))
    assert job_id_for("a", event()) != job_id_for("a", event(digest="sha256:" + "f" * 64))


def test_same_digest_twice_is_one_job_per_host(redis):
    register_host(redis, "a")
    register_host(redis, "b")
    first = enqueue_push(redis, event())
    second = enqueue_push(redis, event())
    assert [j.duplicate for j in first] == [False, False]
    assert [j.duplicate for j in second] == [True, True]
    assert len(get_queue(redis, "a")) == 1 and len(get_queue(redis, "b")) == 1


def test_job_carries_event_json_retries_and_result_ttl(redis):
    register_host(redis, "a")
    [queued] = enqueue_push(redis, event(), retries=2, result_ttl=1234)
    job = get_queue(redis, "a").fetch_job(queued.job_id)
    assert job.func_name == "workers.jobs.apply_push"
    assert list(job.args) == [event().to_dict()]
    assert job.retries_left == 2 and job.result_ttl == 1234
    assert job.meta["host"] == "a"


def test_digestless_pushes_coalesce_into_one_delayed_job_while_it_waits(redis):
    register_host(redis, "a")
    queue = get_queue(redis, "a")
    first = enqueue_push(redis, event(digest=None), coalesce_seconds=10)
    again = enqueue_push(redis, event(digest=None), coalesce_seconds=10)
    assert not first[0].duplicate
    assert again[0].duplicate and again[0].job_id == first[0].job_id
    assert queue.scheduled_job_registry.get_job_ids() == [first[0].job_id]
    assert len(queue) == 0  # nothing runs before the window closes

    # Once the job has started, a later delivery may be a later push: it gets a job of its own.
    job = queue.fetch_job(first[0].job_id)
    job.set_status(JobStatus.STARTED)
    later = enqueue_push(redis, event(digest=None), coalesce_seconds=10)
    assert not later[0].duplicate and later[0].job_id != first[0].job_id
    assert len(queue.scheduled_job_registry.get_job_ids()) == 2


def test_other_references_do_not_coalesce(redis):
    register_host(redis, "a")
    one = enqueue_push(redis, event(digest=None, tag="1"))
    two = enqueue_push(redis, event(digest=None, tag="2"))
    assert not one[0].duplicate and not two[0].duplicate


def test_delivery_ids_are_remembered_per_endpoint(redis):
    assert not is_delivery_seen(redis, "github", "abc")
    remember_delivery(redis, "github", "abc")
    assert is_delivery_seen(redis, "github", "abc")
    assert not is_delivery_seen(redis, "gitea", "abc")
    assert 0 < redis.ttl("podhook:delivery:github:abc") <= 3 * 24 * 3600


def test_a_tag_moved_back_to_an_older_digest_is_a_new_push(redis):
    register_host(redis, "a")
    queue = get_queue(redis, "a")
    digest_a, digest_b = DIGEST, "sha256:" + "b" * 64
    [first] = enqueue_push(redis, event(digest=digest_a))
    queue.fetch_job(first.job_id).set_status(JobStatus.FINISHED)
    assert enqueue_push(redis, event(digest=digest_a))[0].duplicate  # the same push again
    [second] = enqueue_push(redis, event(digest=digest_b))
    queue.fetch_job(second.job_id).set_status(JobStatus.FINISHED)
    [back] = enqueue_push(redis, event(digest=digest_a))
    assert not back.duplicate and back.job_id not in (first.job_id, second.job_id)


def test_a_push_whose_job_failed_can_be_queued_again(redis):
    register_host(redis, "a")
    queue = get_queue(redis, "a")
    [first] = enqueue_push(redis, event())
    queue.fetch_job(first.job_id).set_status(JobStatus.FAILED)
    [again] = enqueue_push(redis, event())
    assert not again.duplicate and again.job_id != first.job_id
    assert again.job_id in queue.get_job_ids()


def test_a_running_job_absorbs_repeats_of_its_push(redis):
    register_host(redis, "a")
    [first] = enqueue_push(redis, event())
    get_queue(redis, "a").fetch_job(first.job_id).set_status(JobStatus.STARTED)
    assert enqueue_push(redis, event())[0].duplicate
