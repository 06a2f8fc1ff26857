"""Distributed mode (``TUMORSEG_QUEUE_URL=redis://host:port/db``): job ids travel through Redis with
dramatiq, and ``tumorseg worker`` processes take them one at a time.

A message is only a job id: the job itself (request, state, result id) lives in the job store that the
API and the workers share. dramatiq's Redis broker keeps a message a worker has taken in that worker's
own set until the worker acknowledges it; every worker writes a heartbeat to Redis each time it talks
to it (its delay-queue consumer polls about once a second, also while the one job thread is busy), and a
worker that has sent none for ``heartbeat_s`` (SIGKILL, power loss, a lost network) is dead: the next
maintenance pass, which runs with every command an idle worker sends for the queue, puts its messages
back, and another worker takes the job. Delivery is therefore at least once; ``QueuedRunner.work`` makes
a second delivery of a job that is done, or that a live worker is running, a no-op, and the API's sweep
(``QueuedRunner.sweep``) sends again a job that no message stands for any more (``pending``).

dramatiq's TimeLimit middleware is not used: it works only in dramatiq's own worker command, and a
segmentation is bounded by its own limits (input sizes, Orthanc timeouts, the stable wait).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from tumorseg.logs import redacted

log = logging.getLogger(__name__)

NAMESPACE = "tumorseg"  # the prefix of every Redis key dramatiq writes
QUEUE_NAME = "segment"
ACTOR_NAME = "segment_job"
# Out of a million broker commands, how many also run the maintenance that requeues a dead worker's
# messages (dramatiq's default: 1000). Every one: the pass is a few Redis calls, and a dead worker's job
# is then back on the queue at the first fetch of an idle worker after the heartbeat timeout.
MAINTENANCE_CHANCE = 1_000_000
DEAD_MESSAGE_TTL_MS = 7 * 24 * 3600 * 1000
POLL_MS = 1000  # how long a consumer waits for a message before it polls Redis again (and heartbeats)
STOP_TIMEOUT_S = 600  # SIGTERM: how long the job in hand may take to finish (compose's stop_grace_period)
SOCKET_TIMEOUT_S = 10.0  # one Redis call; a half-open connection fails instead of hanging a request


class JobQueue:
    """The Redis queue of job ids: ``send`` from the API, ``work`` in a worker."""

    def __init__(self, url: str, heartbeat_s: float) -> None:
        self.url = url
        self.heartbeat_s = heartbeat_s
        self.broker = RedisBroker(
            client=redis.Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=5.0,
                socket_keepalive=True,
                health_check_interval=30,
            ),
            namespace=NAMESPACE,
            heartbeat_timeout=int(heartbeat_s * 1000),
            maintenance_chance=MAINTENANCE_CHANCE,
            dead_message_ttl=DEAD_MESSAGE_TTL_MS,
        )
        self._handler: Callable[[str], None] | None = None
        self._actor = dramatiq.Actor(
            self._handle,
            broker=self.broker,
            actor_name=ACTOR_NAME,
            queue_name=QUEUE_NAME,
            priority=0,
            options={"max_retries": 0},  # a job's failure is recorded in the job store; a retry is a new job
        )

    def send(self, job_id: str, delay_s: float | None = None) -> None:
        """Queue the job id (raises ``redis.RedisError`` when Redis cannot be reached)."""
        self._actor.send_with_options(args=(job_id,), delay=None if delay_s is None else int(delay_s * 1000))

    def pending(self) -> set[str]:
        """The job ids that a message in Redis stands for: waiting, delayed, or taken by a worker and not
        acknowledged yet (dramatiq keeps each message in the queue's hash until its ack)."""
        ids = set()
        for queue in (QUEUE_NAME, f"{QUEUE_NAME}.DQ"):
            for data in self.broker.client.hvals(f"{NAMESPACE}:{queue}.msgs"):
                args = dramatiq.Message.decode(data).args
                if args:
                    ids.add(str(args[0]))
        return ids

    def reachable(self, timeout_s: float = 3.0) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _handle(self, job_id: str) -> None:
        if self._handler is None:  # only a process that called ``work`` consumes messages
            raise RuntimeError("no job handler: this process does not work on jobs")
        self._handler(job_id)

    def work(self, handler: Callable[[str], None], stop: threading.Event) -> None:
        """Take job ids one at a time and give each to ``handler`` until ``stop`` is set; the job in hand
        is finished (``handler`` returns) before this returns."""
        self._handler = handler
        worker = dramatiq.Worker(self.broker, worker_threads=1, worker_timeout=POLL_MS)
        worker.queue_prefetch = 1  # hold no second job while one runs: it would wait behind this one
        worker.start()
        log.info("worker taking jobs from %s (queue %s)", redacted(self.url), QUEUE_NAME)
        try:
            stop.wait()
        finally:
            worker.stop(timeout=STOP_TIMEOUT_S * 1000)

    def close(self) -> None:
        self.broker.close()
