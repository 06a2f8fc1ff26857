"""Distributed mode (issue 17): jobs through a real Redis to real ``tumorseg worker`` processes, against
a real Orthanc. Nothing is lost when a worker is killed mid-job or Redis loses its data, nothing is done
twice when a job is delivered twice or the API restarts, and each study gets exactly one SEG."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from tests.jobs import FAST, FAST_ENV, seg_series, until_finished
from tests.orthanc import OrthancEndpoint, segment_settings, service_env, upload_folder
from tests.processes import started
from tests.studies import clone_study
from tumorseg.api.main import create_app
from tumorseg.config import Settings
from tumorseg.pacs.upload import upload_directory
from tumorseg_devkit.launcher import LocalWorker
from tumorseg_devkit.local import LocalOrthanc, LocalRedis
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration

HEARTBEAT_S = 10.0  # a killed worker's job goes to another after this (TUMORSEG_QUEUE_HEARTBEAT_S, least 10)


def _settings(orthanc: OrthancEndpoint, model: Path, results: Path, queue: LocalRedis) -> Settings:
    return segment_settings(
        orthanc.url, orthanc.auth, model, results, queue_url=queue.url, queue_heartbeat_s=HEARTBEAT_S, **FAST
    )


def _worker(
    orthanc: OrthancEndpoint, model: Path, results: Path, queue: LocalRedis, log: Path
) -> LocalWorker:
    env = service_env(
        orthanc.url,
        orthanc.auth,
        model,
        results,
        queue_url=queue.url,
        queue_heartbeat_s=str(HEARTBEAT_S),
        **FAST_ENV,
    )
    return LocalWorker(env, log, cwd=log.parent, timeout=180)


def _ran(log: Path, job_id: object) -> bool:
    return log.exists() and f"job {job_id} running" in log.read_text()


def test_two_workers_segment_four_studies_with_one_seg_each(
    orthanc: OrthancEndpoint,
    plain_study: ConvertedStudy,
    random_model: Path,
    redis_server: LocalRedis,
    tmp_path: Path,
) -> None:
    studies = tmp_path / "studies"
    patients = [clone_study(plain_study, studies / f"study{i}") for i in range(4)]
    partial = clone_study(plain_study, studies / "partial", modalities=("t1", "t2"))
    upload_folder(orthanc, studies)  # the five at once, then one wait for them to be stable
    results = tmp_path / "results"
    logs = [tmp_path / "worker1.log", tmp_path / "worker2.log"]
    with (
        started([_worker(orthanc, random_model, results, redis_server, log) for log in logs]),
        TestClient(create_app(_settings(orthanc, random_model, results, redis_server))) as client,
    ):
        health = client.get("/health").json()
        assert health["queue"] == {"reachable": True} and health["status"] == "ok", health
        assert health["model"]["loaded"] is True  # the package the workers load is readable

        jobs = [client.post("/jobs", json={"patient_id": p, "store_seg": True}).json() for p in patients]
        skipped = client.post("/jobs", json={"patient_id": partial, "store_seg": True}).json()
        queue = client.app.state.tumorseg.jobs.queue  # type: ignore[attr-defined]
        for job in jobs:  # every job delivered a second time, as a redelivery would: done once only
            queue.send(job["job_id"])
        finished = [until_finished(client, str(job["job_id"])) for job in jobs]
        assert [(j["state"], j["attempts"]) for j in finished] == [("done", 1)] * 4, finished
        for job in jobs:
            assert client.get(f"/results/{job['result_id']}").status_code == 200
        ended = until_finished(client, str(skipped["job_id"]))
        assert ended["state"] == "skipped" and ended["code"] == "modality_missing" and ended["reason"]

        # POST /segment keeps its synchronous contract: it waits for its job and answers its result
        answer = client.post(f"/segment/{patients[0]}", params={"reference": "t1"})
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["reference"]["modality"] == "t1"
        (listed,) = client.get("/jobs", params={"patient_id": patients[0], "limit": 1}).json()["jobs"]
        assert listed["result_id"] == result["result_id"] and listed["state"] == "done"
        assert listed["origin"] == "segment"
        refused = client.post(f"/segment/{partial}")
        assert refused.status_code == 422 and refused.json()["code"] == "modality_missing"
        time.sleep(1)
    assert [seg_series(orthanc, p) for p in patients] == [1, 1, 1, 1]
    assert seg_series(orthanc, partial) == 0
    for log in logs:  # both workers took jobs, and no job ran in both
        assert any(_ran(log, job["job_id"]) for job in jobs), log.read_text()[-2000:]
    assert not any(_ran(logs[0], job["job_id"]) and _ran(logs[1], job["job_id"]) for job in jobs)


def test_a_worker_killed_mid_job_has_its_job_finished_by_another(
    plain_study: ConvertedStudy, random_model: Path, redis_server: LocalRedis, tmp_path: Path
) -> None:
    # Orthanc marks the study stable only 15 s after its last instance: the job waits for it, running,
    # in the fetch stage, and the worker that has it is killed meanwhile.
    with LocalOrthanc(tmp_path / "orthanc", overrides={"StableAge": 15}) as server:
        orthanc = OrthancEndpoint(server.url, *server.auth)
        patient = clone_study(plain_study, tmp_path / "study")
        results = tmp_path / "results"
        workers = [
            _worker(orthanc, random_model, results, redis_server, tmp_path / f"worker{i}.log") for i in (1, 2)
        ]
        with (
            started(workers),
            TestClient(create_app(_settings(orthanc, random_model, results, redis_server))) as client,
        ):
            with orthanc.client() as pacs:
                assert not upload_directory(pacs, tmp_path / "study").failed
            job = client.post("/jobs", json={"patient_id": patient, "store_seg": True}).json()
            deadline = time.monotonic() + 60
            while not any(_ran(w.log_path, job["job_id"]) for w in workers):
                assert time.monotonic() < deadline, "the job was never taken"
                time.sleep(0.1)
            assert client.get(f"/jobs/{job['job_id']}").json()["state"] == "running"
            holder = next(w for w in workers if _ran(w.log_path, job["job_id"]))
            holder.kill()  # SIGKILL, as a power loss: no ack, no last heartbeat
            killed = time.monotonic()
            while client.get(f"/jobs/{job['job_id']}").json()["attempts"] < 2:
                assert time.monotonic() - killed < HEARTBEAT_S + 15, "the job was not taken over"
                time.sleep(0.2)
            taken_over_s = time.monotonic() - killed
            done = until_finished(client, str(job["job_id"]))
            assert done["state"] == "done" and done["attempts"] == 2, done
            assert client.get(f"/results/{job['result_id']}").status_code == 200
            other = next(w for w in workers if w is not holder)
            assert _ran(other.log_path, job["job_id"])
            time.sleep(1)
        assert seg_series(orthanc, patient) == 1
    # not before the heartbeat timeout (counted from the last heartbeat, up to a second before the kill),
    # and within the bound above
    assert HEARTBEAT_S - 1.5 <= taken_over_s


def test_an_api_restart_or_a_redis_that_lost_its_data_repeats_no_job_and_loses_none(
    orthanc: OrthancEndpoint,
    plain_study: ConvertedStudy,
    random_model: Path,
    redis_server: LocalRedis,
    tmp_path: Path,
) -> None:
    patients = [clone_study(plain_study, tmp_path / "studies" / f"study{i}") for i in range(3)]
    upload_folder(orthanc, tmp_path / "studies")
    results = tmp_path / "results"
    settings = _settings(orthanc, random_model, results, redis_server)
    with TestClient(create_app(settings)) as client:  # no worker yet: the jobs wait in Redis
        first = [client.post("/jobs", json={"patient_id": p, "store_seg": True}).json() for p in patients[:2]]
    queue = redis.Redis.from_url(redis_server.url)
    waiting = queue.hlen("tumorseg:segment.msgs")
    with TestClient(create_app(settings)) as client:  # a restart: their messages are in Redis, none sent
        assert client.app.state.tumorseg.jobs.sweep() == 0  # type: ignore[attr-defined]
        assert queue.hlen("tumorseg:segment.msgs") == waiting == 2
        lost = client.post("/jobs", json={"patient_id": patients[2], "store_seg": True}).json()
        queue.flushall()  # Redis lost every message, while the API runs
        deadline = time.monotonic() + HEARTBEAT_S + 10
        while queue.hlen("tumorseg:segment.msgs") < 3:  # the API's sweep sends them again
            assert time.monotonic() < deadline, "the jobs were not sent again"
            time.sleep(0.2)
        with _worker(orthanc, random_model, results, redis_server, tmp_path / "worker.log"):
            ended = [until_finished(client, str(job["job_id"])) for job in [*first, lost]]
            time.sleep(1)
        assert [(j["state"], j["attempts"]) for j in ended] == [("done", 1)] * 3, ended
        assert client.get("/jobs").json()["total"] == 3
    assert [seg_series(orthanc, p) for p in patients] == [1, 1, 1]
