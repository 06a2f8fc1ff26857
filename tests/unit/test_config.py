from __future__ import annotations

import pytest
from pydantic import ValidationError

from tumorseg.config import Settings
from tumorseg.paths import SHIPPED_MODEL


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "USERNAME", "PASSWORD", "TIMEOUT"):
        monkeypatch.delenv(f"TUMORSEG_ORTHANC_{name}", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.orthanc_url == "http://localhost:8042"
    assert settings.orthanc_timeout == 60
    assert settings.device == "auto"
    assert settings.api_key is None
    assert settings.model_path == SHIPPED_MODEL and (SHIPPED_MODEL / "model.json").is_file()
    assert settings.orthanc_auth is None


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUMORSEG_ORTHANC_URL", "http://pacs:8042/")
    monkeypatch.setenv("TUMORSEG_ORTHANC_USERNAME", "svc")
    monkeypatch.setenv("TUMORSEG_ORTHANC_PASSWORD", "pw")
    monkeypatch.setenv("TUMORSEG_DEVICE", "cpu")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.orthanc_url == "http://pacs:8042"
    assert settings.orthanc_auth == ("svc", "pw")
    assert settings.device == "cpu"


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("orthanc_url", "pacs:8042", "http"),
        ("orthanc_url", "ftp://pacs", "http"),
        ("orthanc_timeout", 0, "between 0 and 3600"),
        ("device", "tpu", "auto"),
        ("api_key", "   ", "TUMORSEG_API_KEY"),
        ("queue_url", "http://redis:6379", "redis://redis:6379/0"),
        ("queue_heartbeat_s", 5, "greater than or equal to 10"),
    ],
)
def test_refuses_unusable_values_with_a_hint(field: str, value: object, hint: str) -> None:
    with pytest.raises(ValidationError, match=hint):
        Settings(_env_file=None, **{field: value})  # type: ignore[call-arg, arg-type]


def test_username_without_password_is_refused() -> None:
    with pytest.raises(ValidationError, match="both TUMORSEG_ORTHANC_USERNAME and TUMORSEG_ORTHANC_PASSWORD"):
        Settings(_env_file=None, orthanc_username="svc")  # type: ignore[call-arg]


def test_an_empty_queue_url_means_the_embedded_default() -> None:
    assert Settings(_env_file=None, queue_url="").queue_url is None  # type: ignore[call-arg]
    url = "redis://:secret@redis:6379/0"
    assert Settings(_env_file=None, queue_url=url).queue_url == url  # type: ignore[call-arg]
