"""``tumorseg db``: the PostgreSQL of ``TUMORSEG_DATABASE_URL``.

- ``tumorseg db upgrade``: migrate its schema to this code's (the service also does it at start-up).
- ``tumorseg db import-sqlite RESULTS_DIR``: copy an embedded store (SQLite jobs, results folder) into it.

Exit codes: 0 done, 1 the database refused (schema newer than this code, not reachable), 2 no
``TUMORSEG_DATABASE_URL``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from tumorseg.config import get_settings
from tumorseg.errors import TumorsegError

app = typer.Typer(
    help="The PostgreSQL of TUMORSEG_DATABASE_URL: migrate it, move an old store in.", no_args_is_help=True
)
console = Console(soft_wrap=True)  # URLs and counts on one line, whatever the terminal width
err_console = Console(stderr=True)


def _url() -> str:
    settings = get_settings()
    if settings.database_url is None:
        err_console.print(
            "[red]error:[/red] set TUMORSEG_DATABASE_URL=postgresql://user:password@host:port/db"
        )
        raise typer.Exit(code=2)
    return settings.database_url.get_secret_value()


def _fail(exc: TumorsegError) -> NoReturn:
    err_console.print(f"[red]error[/red] ({exc.code}): {exc.detail}")
    raise typer.Exit(code=1)


@app.command()
def upgrade() -> None:
    """Migrate the database's schema to this code's (under the migration lock; nothing to do at head)."""
    from tumorseg.db import migrate
    from tumorseg.db.pool import redacted

    url = _url()
    try:
        before, after = migrate.upgrade(url)
    except TumorsegError as exc:
        _fail(exc)
    if before == after:
        console.print(f"{redacted(url)}: schema {after}, up to date")
    else:
        console.print(f"{redacted(url)}: schema {before or '(empty)'} -> {after}")


@app.command("import-sqlite")
def import_sqlite(
    results_dir: Annotated[
        Path, typer.Argument(help="The old TUMORSEG_RESULTS_DIR (jobs.sqlite3 and the result folders).")
    ],
) -> None:
    """Copy an embedded store into the database: jobs, the trigger's cursors, every result and its files.
    What the database holds already is kept (not updated): run it once the old service is stopped."""
    from tumorseg.db import importer, migrate
    from tumorseg.db.pool import Database

    if not results_dir.is_dir():
        err_console.print(f"[red]error:[/red] {results_dir} is not a folder")
        raise typer.Exit(code=2)
    url = _url()
    try:
        migrate.upgrade(url)
        db = Database(url, max_size=2)
        try:
            done = importer.import_sqlite(results_dir, db)
        finally:
            db.close()
    except TumorsegError as exc:
        _fail(exc)
    console.print(
        f"imported {done.jobs} job(s) ({done.jobs_kept} there already), {done.cursors} cursor(s), "
        f"{done.results} result(s) ({done.results_kept} there already, {done.results_unreadable} unreadable)"
    )
