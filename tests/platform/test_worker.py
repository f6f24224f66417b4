"""A real Celery worker subprocess on the real Redis: queues, round trip, configuration invariants."""

from __future__ import annotations

import os
import signal
import time

from service.demo import start_worker_process, stop_worker_process
from workers.celery_app import celery_app
from workers.tasks import ping


def test_configuration_for_long_gpu_tasks(settings):
    conf = celery_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    vt = conf.broker_transport_options["visibility_timeout"]
    assert vt == conf.result_backend_transport_options["visibility_timeout"] == settings.broker_visibility_timeout_s
    assert vt > conf.task_time_limit > conf.task_soft_time_limit
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.worker_proc_alive_timeout == settings.worker_proc_alive_timeout_s > 4
    assert {q.name: q.routing_key for q in conf.task_queues} == {"gpu": "gpu", "cpu": "cpu"}


def test_ping_round_trips_through_real_workers_on_each_queue(settings, redis_client, unique_id):
    gpu_worker = start_worker_process(settings, queues="gpu", name=f"{unique_id}-gpu")
    try:
        reply = ping.apply_async(args=[unique_id], queue="gpu").get(timeout=90)
        assert reply["payload"] == unique_id and reply["pong"] is True
        assert reply["pid"] != os.getpid()  # ran in the worker's pool process
        # A cpu task is not taken by a gpu-only worker: it waits in Redis.
        pending = ping.apply_async(args=[unique_id + "-cpu"], queue="cpu")
        time.sleep(1.5)
        assert pending.state == "PENDING"
    finally:
        stop_worker_process(gpu_worker)
    cpu_worker = start_worker_process(settings, queues="cpu", name=f"{unique_id}-cpu")
    try:
        assert pending.get(timeout=90)["payload"] == unique_id + "-cpu"
    finally:
        stop_worker_process(cpu_worker)


def test_task_of_a_killed_pool_process_is_redelivered_not_lost(settings, redis_client, unique_id):
    """acks_late + reject_on_worker_lost: SIGKILL the child mid-task; the task runs again and succeeds."""
    worker = start_worker_process(settings, queues="cpu", name=f"{unique_id}-kill")
    try:
        result = ping.apply_async(args=[unique_id], kwargs={"delay_s": 4.0}, queue="cpu")
        deadline = time.monotonic() + 60
        while result.state != "STARTED":  # task_track_started: the meta names the pool process
            assert time.monotonic() < deadline, f"task never started (state {result.state})"
            time.sleep(0.1)
        first_pid = result.info["pid"]
        os.kill(first_pid, signal.SIGKILL)
        reply = result.get(timeout=90)
        assert reply["payload"] == unique_id
        assert reply["pid"] != first_pid  # it ran to completion in a fresh pool process
    finally:
        stop_worker_process(worker)
