"""Metrics (issue 41) without a PACS: what GET /metrics exports and with which labels, errors counted once,
the stages of a failed run, the worker's own port, the model's CPU path, and the Prometheus and Grafana
files of the repository checked against the metric names."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.models import tiny_package
from tests.orthanc import service_settings
from tumorseg import metrics
from tumorseg.api.main import create_app
from tumorseg.errors import ModalityMissing, ModelError
from tumorseg.jobs import EmbeddedRunner
from tumorseg.jobs.trigger import AutoTrigger
from tumorseg.jobstore import JobStore
from tumorseg.model import fused
from tumorseg.model.predictor import Predictor
from tumorseg.pacs import OrthancClient

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = ROOT / "services" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "services" / "prometheus" / "grafana-dashboard.json"
KEY = "unit-test-key-for-metrics-0123456789"
PATIENT = "PAT-METRICS-SECRET-7"

# The names dashboards may rely on (issue 41), and the histogram's and process collector's derived series.
NAMES = {
    "tumorseg_stage_seconds",
    "tumorseg_segmentations",
    "tumorseg_segmentations_running",
    "tumorseg_requests",
    "tumorseg_errors",
    "tumorseg_jobs",
    "tumorseg_trigger_leader",
    "tumorseg_model_info",
}


def samples(text: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition (this process's registry by default): (name, sorted labels) → value."""
    text = metrics.exposition().decode() if text is None else text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(name: str, **labels: str) -> float:
    return samples().get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The API with an API key, no model and a PACS that is not there (port 9)."""
    settings = service_settings(
        "http://127.0.0.1:9",
        None,
        model_path=tmp_path / "no-model",
        results_dir=tmp_path / "results",
        api_key=KEY,
    )
    with TestClient(create_app(settings)) as api:
        yield api


def test_get_metrics_is_open_and_labels_requests_by_route_template(client: TestClient) -> None:
    route = "/segment/{patient_id}"
    before = {
        "refused": value("tumorseg_requests_total", route=route, status="401"),
        "unknown": value("tumorseg_requests_total", route="unmatched", status="404"),
        "unauthorized": value("tumorseg_errors_total", code="unauthorized"),
        "not_found": value("tumorseg_errors_total", code="not_found"),
        "static": value("tumorseg_requests_total", route="/static/{path}", status="200"),
    }
    assert client.post(f"/segment/{PATIENT}").status_code == 401  # no key
    assert client.get(f"/no-such-route/{PATIENT}").status_code == 404
    assert client.get("/static/style.css").status_code == 200  # a mount: its prefix and {path}
    answer = client.get("/metrics")  # without the key, like /health
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")  # the text format
    text = answer.text
    assert PATIENT not in text  # the route's template, never the path
    now = samples(text)

    def at(name: str, **labels: str) -> float:
        return now.get((name, tuple(sorted(labels.items()))), 0.0)

    assert at("tumorseg_requests_total", route=route, status="401") == before["refused"] + 1
    assert at("tumorseg_requests_total", route="unmatched", status="404") == before["unknown"] + 1
    assert at("tumorseg_errors_total", code="unauthorized") == before["unauthorized"] + 1
    assert at("tumorseg_errors_total", code="not_found") == before["not_found"] + 1
    assert at("tumorseg_requests_total", route="/static/{path}", status="200") == before["static"] + 1
    # this process runs the job runner: it exports the store's jobs, every state, and no auto-trigger
    assert {dict(labels)["state"] for name, labels in now if name == "tumorseg_jobs"} == {
        "queued",
        "running",
        "done",
        "failed",
        "skipped",
    }
    assert at("tumorseg_trigger_leader") == 0
    assert "process_resident_memory_bytes" in {name for name, _ in now}
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_metrics_can_need_the_api_key_which_prometheus_sends_as_a_bearer_token(tmp_path: Path) -> None:
    settings = service_settings(
        "http://127.0.0.1:9",
        None,
        model_path=tmp_path / "no-model",
        results_dir=tmp_path / "results",
        api_key=KEY,
        metrics_need_key=True,
    )
    with TestClient(create_app(settings)) as api:
        assert api.get("/metrics").status_code == 401
        assert api.get("/metrics", headers={"Authorization": "Bearer wrong-key"}).status_code == 401
        assert api.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert api.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
        assert api.get("/health").status_code == 200  # /health stays open


def test_a_failed_job_counts_one_error_and_one_failed_segmentation(client: TestClient) -> None:
    code = ModelError.code
    errors, failed = (
        value("tumorseg_errors_total", code=code),
        value("tumorseg_segmentations_total", network="none", outcome="failed"),
    )
    jobs = client.app.state.tumorseg.jobs  # type: ignore[attr-defined]
    job = client.post("/jobs", json={"patient_id": PATIENT}, headers={"X-API-Key": KEY}).json()
    deadline = time.monotonic() + 30
    while (ended := jobs.store.get(job["job_id"])) is not None and ended.state in ("queued", "running"):
        assert time.monotonic() < deadline  # the embedded runner fails it: no model is loaded
        time.sleep(0.1)
    assert ended is not None and ended.state == "failed" and ended.code == code
    assert value("tumorseg_errors_total", code=code) == errors + 1
    assert value("tumorseg_segmentations_total", network="none", outcome="failed") == failed + 1
    assert value("tumorseg_jobs", state="failed") >= 1
    # a synchronous request refused before any job exists: counted once, at its answer
    answer = client.post(f"/segment/{PATIENT}", headers={"X-API-Key": KEY})
    assert answer.status_code == 503 and answer.json()["code"] == code
    assert value("tumorseg_errors_total", code=code) == errors + 2
    assert PATIENT not in metrics.exposition().decode()


def test_an_error_is_counted_once_where_it_ends() -> None:
    code = ModalityMissing.code
    before = value("tumorseg_errors_total", code=code)
    error = ModalityMissing("no FLAIR")
    metrics.error_ended(code, error)  # the job's end
    metrics.error_ended(code, error)  # the synchronous answer of the same error
    assert value("tumorseg_errors_total", code=code) == before + 1
    # the API re-raises what a worker recorded: that worker counted it
    metrics.error_ended(code, metrics.counted_elsewhere(ModalityMissing("no FLAIR")))
    assert value("tumorseg_errors_total", code=code) == before + 1


def test_the_stages_of_a_run_are_observed_also_when_it_fails() -> None:
    before = value("tumorseg_stage_seconds_count", stage="fetch")
    seconds = value("tumorseg_stage_seconds_sum", stage="fetch")
    timings: dict[str, float] = {}
    with pytest.raises(ModalityMissing), metrics.segmentation(timings):
        assert value("tumorseg_segmentations_running") == 1
        timings["fetch"] = 0.25  # the timer fills it in while the run goes on
        raise ModalityMissing("no FLAIR")
    assert value("tumorseg_segmentations_running") == 0
    assert value("tumorseg_stage_seconds_count", stage="fetch") == before + 1
    assert value("tumorseg_stage_seconds_sum", stage="fetch") == pytest.approx(seconds + 0.25)


def test_the_auto_trigger_sets_the_leader_gauge_while_it_runs(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    with OrthancClient("http://127.0.0.1:9", None, 1.0) as pacs:  # nobody there: it retries meanwhile
        trigger = AutoTrigger(pacs, EmbeddedRunner(store, lambda: None), "tiny 0", poll_s=0.1)  # type: ignore[arg-type,return-value]
        trigger.start()
        assert value("tumorseg_trigger_leader") == 1
        trigger.stop()
    assert value("tumorseg_trigger_leader") == 0
    store.close()


def test_a_worker_serves_its_metrics_on_a_port_it_picks_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tumorseg.metrics"):
        port = metrics.serve(0, host="127.0.0.1")
    assert port > 0 and f":{port}/metrics" in caplog.text
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert answer.status_code == 200 and "tumorseg_trigger_leader" in answer.text
    assert metrics.serve(0, host="127.0.0.1") != port  # a second worker on the host does not collide


def test_model_info_names_the_model_and_its_cpu_path(tmp_path: Path) -> None:
    package = tiny_package(tmp_path / "tiny", norm="BATCH")  # folded BatchNorm: fusable blocks
    fast = Predictor.from_package(package, "cpu")
    metrics.model_loaded(fast)
    (info,) = [labels for name, labels in samples() if name == "tumorseg_model_info"]
    expected_path = "fused" if fused._mkldnn_ops() is not None else "plain"
    assert dict(info) == {
        "name": fast.manifest.name,
        "version": fast.manifest.version,
        "device": "cpu",
        "cpu_path": expected_path,
    }
    metrics.model_loaded(Predictor.from_package(package, "cpu", fast=False))
    (info,) = [labels for name, labels in samples() if name == "tumorseg_model_info"]
    assert dict(info)["cpu_path"] == "plain"  # one series: the model this process runs now


def test_the_dashboard_and_the_scrape_config_use_only_exported_names() -> None:
    exported = {name for name, _ in samples()}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\b(tumorseg_[a-z_]+|process_[a-z_]+)", expr)}
    known = exported | {f"{n}_{s}" for n in NAMES for s in ("total", "bucket", "count", "sum")}
    assert used <= known | NAMES, used - known - NAMES
    assert NAMES <= {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}, (
        "a metric with no panel"
    )
    assert all("sum(tumorseg_jobs" not in e.replace(" ", "") for e in exprs), "tumorseg_jobs: max, never sum"
    text = PROMETHEUS_YML.read_text()
    assert "tumorseg-api" in text and "tumorseg-worker" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus, `make setup`) is not installed")
    check = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_compose_stack_scrapes_the_workers_metrics_port_with_prometheus_on_localhost() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus, worker = compose["services"]["prometheus"], compose["services"]["worker"]
    name, _, tag = str(prometheus["image"]).partition(":")
    assert name == "prom/prometheus" and re.fullmatch(r"v\d+\.\d+\.\d+", tag), prometheus["image"]
    assert prometheus["profiles"] == ["scale"]
    assert all(str(port).startswith("127.0.0.1:") for port in prometheus["ports"])
    assert "./services/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    port = worker["environment"]["TUMORSEG_METRICS_PORT"]
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    jobs = {job["job_name"]: job for job in scrape}
    assert jobs["tumorseg-worker"]["dns_sd_configs"][0]["port"] == int(port)
    # every API service of the stack is scraped, on the port it serves inside the compose network
    apis = [name for name, service in compose["services"].items() if name.startswith("inference")]
    assert jobs["tumorseg-api"]["static_configs"][0]["targets"] == [f"{name}:8000" for name in apis]
