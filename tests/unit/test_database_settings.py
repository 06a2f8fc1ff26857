"""``TUMORSEG_DATABASE_URL``: a PostgreSQL URL or nothing, and its password never in a message or a log."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tumorseg.config import Settings
from tumorseg.db.pool import redacted

PASSWORD = "s3cret-Pa55word"


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_postgresql_url_is_kept_secret() -> None:
    url = f"postgresql://tumorseg:{PASSWORD}@db:5432/tumorseg"
    settings = _settings(database_url=url)
    assert settings.database_url is not None and settings.database_url.get_secret_value() == url
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.model_dump())
    assert redacted(url) == "postgresql://tumorseg:***@db:5432/tumorseg"
    assert _settings(database_url="  ").database_url is None  # empty in .env: unset


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://tumorseg:{PASSWORD}@db/tumorseg",
        f"postgresql://tumorseg:{PASSWORD}@db:5432",  # no database name
        "sqlite:///results/jobs.sqlite3",
    ],
)
def test_other_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        _settings(database_url=url)
    message = str(refused.value)
    assert "TUMORSEG_DATABASE_URL must be a PostgreSQL URL" in message and PASSWORD not in message
