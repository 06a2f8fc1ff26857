"""The ``tumorseg`` command line (Typer). Each command is a thin shell around one library function."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from tumorseg.config import get_settings
from tumorseg.errors import TumorsegError
from tumorseg.sequences import SequenceName

if TYPE_CHECKING:
    from tumorseg.config import Settings
    from tumorseg.pacs import Pacs
    from tumorseg.pipeline import SegmentRequest
    from tumorseg.results import ResultStore
    from tumorseg.schema import SegmentResult

app = typer.Typer(
    help="Brain-tumour segmentation next to a PACS (Orthanc REST or DICOMweb).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _pacs() -> Pacs:
    from tumorseg.wiring import open_pacs

    return open_pacs(get_settings())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Run the HTTP API (Swagger UI at /docs)."""
    import uvicorn

    from tumorseg import logs
    from tumorseg.api.main import create_app
    from tumorseg.wiring import configure_process

    logs.configure()
    # Before the server starts its threads (wiring.configure_process): the allocator and CPU threads.
    api = create_app(process=configure_process())
    # log_config=None keeps uvicorn from replacing the JSON handlers set up above.
    uvicorn.run(api, host=host, port=port, log_config=None, access_log=False)


@app.command()
def worker() -> None:
    """Take jobs from the Redis queue (TUMORSEG_QUEUE_URL) one at a time; the model is loaded once. Run one
    per GPU: with TUMORSEG_DATABASE_URL on any host (PostgreSQL holds jobs and results), else on the
    host whose results directory the API uses. SIGTERM finishes the job in hand first.
    With TUMORSEG_METRICS_PORT, Prometheus metrics at http://host:PORT/metrics (0: a free port, logged)."""
    from tumorseg import logs, metrics
    from tumorseg.api.urls import result_links
    from tumorseg.jobs import QueuedRunner
    from tumorseg.jobs.queue import redacted
    from tumorseg.model.device import resolve_device
    from tumorseg.wiring import (
        build_segmenter,
        configure_process,
        load_predictor,
        open_jobs,
        open_queue,
        open_store,
    )

    settings = get_settings()
    queue = open_queue(settings)
    if queue is None:
        err_console.print("[red]error[/red]: set TUMORSEG_QUEUE_URL (redis://host:port/db) to run a worker")
        raise typer.Exit(code=2)
    logs.configure()
    process = configure_process()  # before the model loads and the worker's threads start
    stop = _stop_on_signals()
    if not queue.reachable():
        err_console.print(
            f"warning: Redis at {redacted(queue.url)} does not answer yet; the worker waits for it"
        )
    try:
        predictor = load_predictor(settings, resolve_device(settings.device), process)
    except TumorsegError as exc:
        _fail(exc)
    metrics.model_loaded(predictor)
    if settings.metrics_port is not None:  # before the first job: Prometheus sees it idle
        _serve_metrics(settings.metrics_port)
    job_store = open_jobs(settings)
    with _pacs() as pacs:
        store = open_store(settings, job_store)
        segmenter = build_segmenter(settings, pacs, predictor, store, result_links)
        queue.work(QueuedRunner(job_store, lambda: segmenter, queue, store).work, stop)
    job_store.close()
    queue.close()


def _stop_on_signals() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT (finish the job in hand, take no other); a second one
    ends the process at once (the job in hand goes to another worker)."""
    import os
    import signal

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            os._exit(1)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop


def _serve_metrics(port: int) -> None:
    """The worker's Prometheus metrics on ``port``; exit 2 when it is taken."""
    from tumorseg import metrics

    try:
        metrics.serve(port)
    except OSError as exc:
        err_console.print(
            f"[red]error[/red]: TUMORSEG_METRICS_PORT={port}: {exc.strerror}; choose a free port, or 0 for any"
        )
        raise typer.Exit(code=2) from exc


def _fail(exc: TumorsegError) -> NoReturn:
    err_console.print(f"[red]error[/red] ({exc.code}): {exc.detail}")
    raise typer.Exit(code=2)


@app.command()
def inspect(
    patient_id: Annotated[str, typer.Argument(help="DICOM PatientID.")],
    study: Annotated[
        str | None, typer.Option(help="StudyInstanceUID to assemble instead of the newest.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Orthanc, the patient, the studies, and the series `segment` would use (with rejected series and why)."""
    from tumorseg.inspect_patient import inspect_patient
    from tumorseg.model.package import read_manifest
    from tumorseg.sequences import ALL_FOUR

    settings = get_settings()
    try:  # the sequences the model needs; without a readable package, all four
        policy = read_manifest(settings.model_path).inputs
    except TumorsegError:
        policy = ALL_FOUR
    with _pacs() as pacs:
        try:
            report = inspect_patient(
                pacs, patient_id, study_instance_uid=study, rules=settings.mapping_rules, policy=policy
            )
        except TumorsegError as exc:
            _fail(exc)
    if as_json:
        typer.echo(json.dumps(report, indent=2))  # plain: scripts parse it
    else:
        _print_inspection(report)
    if not report["orthanc"]["reachable"] or "series" not in report:
        raise typer.Exit(code=1)


def _print_inspection(report: dict[str, Any]) -> None:
    from rich.table import Table

    orthanc = report["orthanc"]
    version = f", version {orthanc['version']}" if orthanc.get("version") else ""
    state = f"reachable{version}" if orthanc["reachable"] else f"NOT reachable: {orthanc.get('error')}"
    console.print(f"{orthanc.get('protocol', 'Orthanc REST')} {orthanc['url']}: {state}")
    if not orthanc["reachable"]:
        return
    patient = report.get("patient")
    if not patient:
        console.print(f"no study for PatientID {report['patient_id']!r}")
        return
    console.print(
        f"patient {report['patient_id']}: {patient['patient_name']} born {patient['patient_birth_date']} "
        f"sex {patient['patient_sex']}"
    )
    for study in report["studies"]:
        console.print(
            f"study {study['study_instance_uid']} ({study['study_date']}, {study['series_count']} series) "
            f"{'complete' if study['complete'] else 'incomplete'}"
        )
    if "error" in report:
        console.print(f"[red]cannot segment[/red] ({report['error']['code']}): {report['error']['detail']}")
        return
    table = Table(title=f"series for study {report['study_instance_uid']}")
    for column in ("modality", "series description", "SeriesInstanceUID"):
        table.add_column(column)
    for modality, ref in report["series"].items():
        table.add_row(modality, ref["series_description"], ref["series_instance_uid"])
    for rejected in report.get("rejected", []):
        table.add_row("[dim]rejected[/dim]", rejected["series_description"], rejected["reason"])
    console.print(table)
    for note in report.get("notes", []):
        console.print(f"note: {note}")


@app.command()
def timeline(
    patient_id: Annotated[str, typer.Argument(help="the DICOM PatientID")],
    as_json: Annotated[bool, typer.Option("--json", help="print the timeline JSON")] = False,
) -> None:
    """A patient's studies over time: volumes per region and change against the baseline and the nadir
    (research use only; the job store and results of this service's TUMORSEG_RESULTS_DIR)."""
    from rich.table import Table

    from tumorseg.api.urls import linked_timeline
    from tumorseg.model.package import read_manifest
    from tumorseg.timeline import TABLE_COLUMNS, ModelTag, build_timeline, table_rows
    from tumorseg.wiring import open_jobs, open_store

    settings = get_settings()
    manifest = read_manifest(settings.model_path)
    jobs = open_jobs(settings)
    try:
        with _pacs() as pacs:
            found = build_timeline(
                pacs,
                jobs,
                open_store(settings, jobs),
                patient_id,
                ModelTag(name=manifest.name, version=manifest.version),
            )
        found = linked_timeline(found)  # the same viewer links as GET /patients/{id}/timeline
    except TumorsegError as exc:
        _fail(exc)
    finally:
        jobs.close()
    if as_json:
        console.print_json(found.model_dump_json())
        return
    table = Table(*TABLE_COLUMNS, title=f"patient {patient_id}: model {manifest.name} {manifest.version}")
    for row in table_rows(found):
        table.add_row(*row)
    console.print(table)
    console.print(found.research_note)


@app.command()
def segment(
    patient_id: Annotated[str, typer.Argument(help="DICOM PatientID.")],
    study: Annotated[
        str | None, typer.Option(help="StudyInstanceUID; default: newest complete study.")
    ] = None,
    reference: Annotated[SequenceName, typer.Option(help="Series whose lattice the mask lies on.")] = "flair",
    out: Annotated[Path, typer.Option(help="Folder for mask, preview and result.json.")] = Path("out"),
    series: Annotated[
        list[str] | None, typer.Option(help="MOD=SeriesInstanceUID to override the mapping (repeatable).")
    ] = None,
    store_seg: Annotated[
        bool, typer.Option(help="Also store a DICOM SEG in the study in Orthanc (or TUMORSEG_STORE_SEG).")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(help="Wait (up to TUMORSEG_STABLE_WAIT_S) for a study Orthanc has not marked stable."),
    ] = False,
    registration: Annotated[
        bool | None,
        typer.Option(
            "--registration/--no-registration",
            help="Co-register the series to the reference (default: TUMORSEG_REGISTRATION, on).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """The segmentation pipeline without the API: writes OUT/mask.nii.gz, OUT/preview.png, OUT/result.json."""
    from tumorseg.pipeline import SegmentRequest

    settings = get_settings()
    try:
        request = SegmentRequest(
            patient_id=patient_id,
            study_instance_uid=study,
            reference=reference,
            explicit_series=_explicit_series(series or []),
            store_seg=store_seg or settings.store_seg,
            registration=registration,
            wait=wait,
        )
        result, store = _run_segmentation(settings, request)
    except TumorsegError as exc:
        _fail(exc)
    _write_segmentation(out, result, store)
    _print_segmentation(result, out, settings)


def _run_segmentation(settings: Settings, request: SegmentRequest) -> tuple[SegmentResult, ResultStore]:
    """The process set up, the model loaded, and the pipeline run once with its progress on the console;
    the result and the store that holds its files."""
    from tumorseg.api.urls import result_links
    from tumorseg.model.device import resolve_device
    from tumorseg.wiring import build_segmenter, configure_process, load_predictor, open_store

    process = configure_process()  # before the console's status thread starts
    with _pacs() as pacs, console.status("loading the model") as status:
        predictor = load_predictor(settings, resolve_device(settings.device), process)
        segmenter = build_segmenter(settings, pacs, predictor, open_store(settings), result_links)
        result = segmenter.run(request, progress=lambda stage: status.update(f"{stage}…"))
    return result, segmenter.store


def _write_segmentation(out: Path, result: SegmentResult, store: ResultStore) -> None:
    """OUT/mask.nii.gz and OUT/preview.png from the result store, and OUT/result.json."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("mask.nii.gz", "preview.png"):
        (out / name).write_bytes(store.read_file(result.result_id, name))
    (out / "result.json").write_text(result.model_dump_json(indent=2) + "\n")


def _print_segmentation(result: SegmentResult, out: Path, settings: Settings) -> None:
    volumes = result.volumes_ml
    console.print(
        f"result {result.result_id}: WT {volumes.wt:.1f} mL, TC {volumes.tc:.1f} mL, "
        f"ET {volumes.et:.1f} mL on the {result.reference.modality} lattice; "
        f"total {result.timings_s.total:.1f} s"
    )
    if result.dicom_seg:
        console.print(f"stored DICOM SEG series {result.dicom_seg.series_instance_uid} in the study")
    console.print(f"wrote {out / 'mask.nii.gz'}, {out / 'preview.png'} and {out / 'result.json'}")
    if result.viewer_url:
        console.print(
            f"viewer: {result.viewer_url} on `tumorseg serve` with this TUMORSEG_RESULTS_DIR "
            f"({settings.results_dir})"
        )


def _explicit_series(values: list[str]) -> dict[str, str] | None:
    pairs = [value.partition("=") for value in values]
    if any(not sep or not uid for _, sep, uid in pairs):
        raise typer.BadParameter(
            "use MOD=SeriesInstanceUID, e.g. --series flair=1.2.840…", param_hint="--series"
        )
    return {modality.strip().lower(): uid.strip() for modality, _, uid in pairs} or None


@app.command()
def upload(
    directory: Annotated[Path, typer.Argument(help="Folder searched recursively for DICOM files.")],
    workers: Annotated[int, typer.Option(min=1, max=32, help="Parallel uploads.")] = 4,
    wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Then wait up to this many seconds until Orthanc marks the studies stable (segment answers "
            "409 study_incomplete before that).",
        ),
    ] = None,
) -> None:
    """Send every DICOM file under DIRECTORY to the PACS (Orthanc REST, or STOW-RS over DICOMweb; idempotent)."""
    from tumorseg.pacs.upload import upload_directory

    with _pacs() as pacs:
        try:
            report = upload_directory(
                pacs, directory, workers=workers, show_progress=True, stable_timeout=wait
            )
        except TimeoutError as exc:
            err_console.print(f"[red]error[/red] {exc}")
            raise typer.Exit(code=1) from exc
    console.print(
        f"{report.stored} stored, {report.already_stored} already stored, {len(report.failed)} failed"
    )
    for path, reason in report.failed:
        err_console.print(f"[red]failed[/red] {path}: {reason}")
    if report.failed or not report.total:
        if not report.total:
            err_console.print(f"no DICOM files under {directory}")
        raise typer.Exit(code=1)


def _add_plugin_commands() -> None:
    """Commands of installed plugins (entry points in the group ``tumorseg.cli``, each a function that
    takes this Typer app): ``tumorseg train`` and ``tumorseg evaluate`` come from the training package
    (``training/``), ``tumorseg phantom``, ``phantom-followup`` and ``to-dicom`` from the development kit
    (``devkit/``); ``make setup`` installs both, the service never imports them and its image lacks them."""
    from importlib.metadata import entry_points

    for entry_point in entry_points(group="tumorseg.cli"):
        entry_point.load()(app)


def _add_model_commands() -> None:
    """``tumorseg model ...`` (``tumorseg.model_cli``): import MONAI bundles and nnU-Net models, describe one."""
    from tumorseg.model_cli import app as model_app

    app.add_typer(model_app, name="model")
    from tumorseg.db.cli import app as db_app  # tumorseg db upgrade / import-sqlite

    app.add_typer(db_app, name="db")


_add_model_commands()
_add_plugin_commands()


def main() -> None:  # pragma: no cover - console entry point alias
    app()
