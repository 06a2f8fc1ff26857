"""The ``tumorseg`` command line (Typer). Each command is a thin shell around one library function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tumorseg.config import get_settings

app = typer.Typer(
    help="Brain-tumour segmentation next to an Orthanc PACS.", no_args_is_help=True, add_completion=False
)
console = Console()
err_console = Console(stderr=True)


def _pacs():  # type: ignore[no-untyped-def]
    from tumorseg.pacs import OrthancClient

    settings = get_settings()
    return OrthancClient(settings.orthanc_url, settings.orthanc_auth, settings.orthanc_timeout)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Run the HTTP API (Swagger UI at /docs)."""
    import uvicorn

    from tumorseg import logs
    from tumorseg.api.main import create_app

    logs.configure()
    uvicorn.run(create_app(), host=host, port=port, log_level="info")


@app.command()
def upload(
    directory: Annotated[Path, typer.Argument(help="Folder searched recursively for DICOM files.")],
    workers: Annotated[int, typer.Option(min=1, max=32, help="Parallel uploads.")] = 4,
) -> None:
    """Send every DICOM file under DIRECTORY to Orthanc (idempotent: stored files say 'already stored')."""
    from tumorseg.pacs.upload import upload_directory

    with _pacs() as pacs:
        report = upload_directory(pacs, directory, workers=workers, show_progress=True)
    console.print(
        f"{report.stored} stored, {report.already_stored} already stored, {len(report.failed)} failed"
    )
    for path, reason in report.failed:
        err_console.print(f"[red]failed[/red] {path}: {reason}")
    if report.failed or not report.total:
        if not report.total:
            err_console.print(f"no DICOM files under {directory}")
        raise typer.Exit(code=1)


def main() -> None:  # pragma: no cover - console entry point alias
    app()
