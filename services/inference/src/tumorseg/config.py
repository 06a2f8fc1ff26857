"""The one settings object. Nothing else in tumorseg reads ``os.environ``.

Values come from environment variables prefixed ``TUMORSEG_`` and an optional ``.env`` file
(see docs/contract.md, "Configuration"). Unusable values are refused when the object is built, with a
message that says how to fix them, so the service fails at start-up rather than on the first request.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tumorseg.limits import InputLimits
from tumorseg.paths import SHIPPED_MODEL

DEFAULT_MODEL_PATH = SHIPPED_MODEL


_COMMON_KEYS = {"changeme", "secret", "password", "apikey", "api-key", "test", "admin", "tumorseg", "orthanc"}


def is_weak_key(key: str) -> bool:
    """Too short, one repeated character, or a word people put in examples."""
    return len(key) < 24 or len(set(key)) < 8 or key.lower().strip("0123456789") in _COMMON_KEYS


class Settings(BaseSettings):
    """Validated configuration; build it once (``get_settings()``) and pass it down."""

    # hide_input_in_errors: a refused value is not echoed back (a database URL or key carries a secret)
    model_config = SettingsConfigDict(
        env_prefix="TUMORSEG_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
    )

    orthanc_url: str = Field(default="http://localhost:8042", description="Base URL of Orthanc's REST API.")
    orthanc_username: str | None = Field(default=None, description="Orthanc HTTP basic-auth user.")
    orthanc_password: SecretStr | None = Field(default=None, description="Orthanc HTTP basic-auth password.")
    orthanc_timeout: float = Field(default=60.0, description="Seconds allowed for one Orthanc call.")
    dicomweb_url: str | None = Field(
        default=None,
        description="Base URL of a DICOMweb PACS (QIDO-RS, WADO-RS, STOW-RS), e.g. http://pacs/dicom-web; "
        "when set, nothing uses Orthanc REST. Basic auth from TUMORSEG_ORTHANC_USERNAME/PASSWORD, or a "
        "bearer token (TUMORSEG_DICOMWEB_TOKEN).",
    )
    dicomweb_token: SecretStr | None = Field(
        default=None, description="Bearer token for the DICOMweb PACS (instead of basic auth)."
    )
    results_dir: Path = Field(default=Path("./results"), description="Where results are persisted.")
    results_max_age_days: float | None = Field(
        default=None, gt=0, description="Results older than this are deleted (unset: kept)."
    )
    results_max_gb: float | None = Field(
        default=None,
        gt=0,
        description="The oldest results are deleted while the store is larger (unset: no bound).",
    )
    model_path: Path = Field(default=DEFAULT_MODEL_PATH, description="Model package directory.")
    mapping_rules: Path | None = Field(
        default=None,
        description="A JSON file of series-mapping rules that replaces the shipped one (tumorseg/study/rules.json).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Inference device.")
    store_seg: bool = Field(
        default=False,
        description="Store a DICOM SEG of every result in the source study in Orthanc, as if each "
        "POST /segment asked store_seg=true (a request cannot turn it off).",
    )
    registration: bool = Field(
        default=True,
        description="Co-register every series rigidly to the reference series before resampling (patients "
        "move between series); false for studies known to be pre-registered. A request's ?registration= "
        "overrides it.",
    )
    brain_extractor: Literal["auto", "deepbet", "none"] = Field(
        default="auto",
        description="Brain extraction: auto (skull-stripped input is kept as it is, any other goes to "
        "deepbet), deepbet (always), none (the whole field of view, no extraction).",
    )
    series_cache_mb: int = Field(
        default=512,
        ge=0,
        description="Memory for decoded series kept between requests (0: none); repeated requests skip fetch and decode.",
    )
    queue_size: int = Field(
        default=4,
        ge=0,
        le=1000,
        description="Requests that may wait while one runs; more are answered 503 with Retry-After.",
    )
    max_frame_pixels: int = Field(
        default=2048 * 2048, ge=1, description="Most pixels (Rows x Columns) one frame may have."
    )
    max_series_frames: int = Field(default=2000, ge=2, description="Most instances one series may have.")
    max_study_gb: float = Field(
        default=4.0, gt=0, description="Most memory the decoded volumes of one request may take, GiB."
    )
    max_extent_mm: float = Field(
        default=400.0, gt=0, description="Largest field of view of a series along any axis, mm."
    )
    stable_wait_s: float = Field(
        default=120.0,
        ge=0,
        le=3600,
        description="How long ?wait=true waits for Orthanc to mark a study stable before answering 409.",
    )
    auto_segment: bool = Field(
        default=False,
        description="Follow Orthanc's change log and queue a job (storing a DICOM SEG) for every study "
        "Orthanc marks stable, once per study content and model version.",
    )
    auto_segment_days: int = Field(
        default=2,
        ge=1,
        le=3650,
        description="Over DICOMweb, the auto-trigger polls the studies of the last this many days (StudyDate).",
    )
    auto_segment_poll_s: float = Field(
        default=5.0, gt=0, le=3600, description="How often the auto-trigger reads Orthanc's /changes."
    )
    queue_url: str | None = Field(
        default=None,
        description="Distributed mode: redis://host:port/db of the Redis that carries jobs to `tumorseg "
        "worker` processes (unset: jobs run in the API process).",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://user:password@host:port/db: jobs, the auto-trigger's cursors and the "
        "results (JSON and files) live in this PostgreSQL, and no results directory is used; its schema is "
        "migrated at start-up (or by `tumorseg db upgrade`). Unset: SQLite and TUMORSEG_RESULTS_DIR.",
    )
    queue_heartbeat_s: float = Field(
        default=60.0,
        ge=10,
        le=600,
        description="Distributed mode: a worker silent for this long is dead, and its job goes to another.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="`tumorseg worker` serves Prometheus metrics at http://<host>:<port>/metrics (0: a free "
        "port, logged); unset: none. The API serves GET /metrics on its own port and ignores this.",
    )
    metrics_need_key: bool = Field(
        default=False,
        description="GET /metrics needs the API key too: header X-API-Key, or Authorization: Bearer <key> "
        "(what Prometheus sends with `authorization: {credentials_file: ...}`). Default: open, like /health.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="When set, every route but /health and /metrics needs header X-API-Key."
    )
    environment: Literal["development", "production"] = Field(
        default="development",
        description="production refuses to start open (no API key) or with a weak API key.",
    )

    @field_validator("orthanc_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"TUMORSEG_ORTHANC_URL={value!r} is not an http(s) URL; set it like http://orthanc-host:8042"
            )
        return value.rstrip("/")

    @field_validator("dicomweb_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("dicomweb_url")
    @classmethod
    def _check_dicomweb_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"TUMORSEG_DICOMWEB_URL={value!r} is not an http(s) URL; set it like http://pacs:8042/dicom-web"
            )
        return value.rstrip("/")

    @field_validator("queue_url")
    @classmethod
    def _check_queue_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
            raise ValueError(
                f"TUMORSEG_QUEUE_URL must be a Redis URL like redis://redis:6379/0, not {parts.scheme!r}://…"
            )
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _check_database_url(cls, value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        parts = urlsplit(str(raw))
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.path.strip("/"):
            raise ValueError(
                f"TUMORSEG_DATABASE_URL must be a PostgreSQL URL like postgresql://user:password@host:5432/"
                f"tumorseg, not {parts.scheme!r}://… (host and database name are needed)"
            )
        return value

    @field_validator("orthanc_timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if not 0 < value <= 3600:
            raise ValueError(
                f"TUMORSEG_ORTHANC_TIMEOUT={value} must be between 0 and 3600 seconds "
                "(Orthanc finds and downloads need tens of seconds on real PACS sizes; default 60)"
            )
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> Settings:
        if (self.orthanc_username is None) != (self.orthanc_password is None):
            raise ValueError("set both TUMORSEG_ORTHANC_USERNAME and TUMORSEG_ORTHANC_PASSWORD, or neither")
        if self.dicomweb_token is not None and self.dicomweb_url is None:
            raise ValueError("TUMORSEG_DICOMWEB_TOKEN is set but TUMORSEG_DICOMWEB_URL is not")
        if self.dicomweb_token is not None and self.orthanc_username is not None:
            raise ValueError(
                "give the DICOMweb PACS either a bearer token (TUMORSEG_DICOMWEB_TOKEN) or basic auth "
                "(TUMORSEG_ORTHANC_USERNAME/PASSWORD), not both"
            )
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError("TUMORSEG_API_KEY is set but empty; unset it to run open, or give a key")
        if self.environment == "production":
            key = self.api_key.get_secret_value() if self.api_key is not None else ""
            if not key:
                raise ValueError(
                    "TUMORSEG_ENVIRONMENT=production needs TUMORSEG_API_KEY (a random key of 24+ characters)"
                )
            if is_weak_key(key):
                raise ValueError(
                    "TUMORSEG_API_KEY is too weak for production: use 24+ random characters, "
                    "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )
        return self

    @property
    def limits(self) -> InputLimits:
        return InputLimits(
            max_frame_pixels=self.max_frame_pixels,
            max_series_frames=self.max_series_frames,
            max_study_bytes=int(self.max_study_gb * 2**30),
            max_extent_mm=self.max_extent_mm,
        )

    @property
    def orthanc_auth(self) -> tuple[str, str] | None:
        if self.orthanc_username is None or self.orthanc_password is None:
            return None
        return (self.orthanc_username, self.orthanc_password.get_secret_value())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
