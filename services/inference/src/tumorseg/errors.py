"""The errors tumorseg raises, as one tree.

    TumorsegError
    ├── PacsError                    Orthanc could not give a usable answer
    │   ├── PacsUnavailable          not reachable (connection refused/reset, DNS)      → 503
    │   ├── PacsTimeout              reachable but too slow (read/write/pool timeout)   → 504
    │   ├── PacsRejected             credentials refused (401/403)                      → 502
    │   ├── PacsProtocolError        answered, but wrongly (5xx, bad JSON, empty body)  → 502
    │   └── PacsNotFound             Orthanc does not know the resource (404)           → 404
    ├── StudyError                   the patient's data cannot be used as asked         → 422
    │   ├── PatientNotFound          no study for this PatientID                        → 404
    │   ├── StudyNotFound            no such StudyInstanceUID for this patient          → 404
    │   ├── ModalityMissing          FLAIR/T1/T1ce/T2 not all present                   → 422
    │   ├── AmbiguousSeries          two series fit one modality equally well           → 422
    │   ├── ContrastContradiction    a pre/post pair's agent tags and names disagree    → 422
    │   ├── BrokenSeries             a series cannot become a volume                    → 422
    │   │   └── SeriesTooLarge       over a size/extent limit (checked before decoding) → 422
    │   ├── SeriesApart              the series do not overlap the reference's volume   → 422
    │   └── StudyIncomplete          Orthanc has not marked the study stable yet        → 409
    ├── ResultNotFound               unknown result id                                  → 404
    ├── ResultPending                its job has not finished yet (Retry-After)         → 409
    ├── ResultFailed                 its job failed or was skipped (code and reason)    → 422
    ├── InvalidInput                 a value the caller sent is malformed               → 422
    ├── ModelError                   the model package cannot be loaded or run          → 503
    ├── Busy                         the inference queue is full (Retry-After)          → 503
    ├── QueueUnavailable             Redis (TUMORSEG_QUEUE_URL) not reachable            → 503
    ├── DatabaseUnavailable          PostgreSQL (TUMORSEG_DATABASE_URL) not reachable    → 503
    └── DatabaseSchemaError          the database's schema is newer than this code (start-up)

Library errors are wrapped where they enter (``raise PacsTimeout(...) from exc``). The HTTP status of
each class is decided in one place only: ``tumorseg.api.errors``. Messages are written for the user
who has to act on them and never contain patient names or birth dates.
"""

from __future__ import annotations


class TumorsegError(Exception):
    """Base of every error tumorseg raises on purpose. ``code`` is the stable machine-readable name;
    ``retry_after_s``, where set, is sent as the answer's Retry-After header."""

    code = "tumorseg_error"
    retry_after_s: int | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _RetryLater(TumorsegError):
    """An error that goes away by itself: the caller should retry after ``retry_after_s`` seconds."""

    def __init__(self, detail: str, retry_after_s: int = 30) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class PacsError(TumorsegError):
    code = "pacs_error"


class PacsUnavailable(PacsError):
    code = "pacs_unavailable"


class PacsTimeout(PacsError):
    code = "pacs_timeout"


class PacsRejected(PacsError):
    code = "pacs_rejected"


class PacsProtocolError(PacsError):
    code = "pacs_protocol_error"


class PacsNotFound(PacsError):
    code = "pacs_not_found"


class StudyError(TumorsegError):
    code = "study_error"


class PatientNotFound(StudyError):
    code = "patient_not_found"


class StudyNotFound(StudyError):
    code = "study_not_found"


class ModalityMissing(StudyError):
    code = "modality_missing"


class AmbiguousSeries(StudyError):
    code = "ambiguous_series"


class ContrastContradiction(StudyError):
    """Two series of one protocol whose contrast agent tags and names say opposite things: which is T1 and
    which T1ce cannot be decided without guessing (``tumorseg.study.evidence``)."""

    code = "contrast_contradiction"


class BrokenSeries(StudyError):
    code = "broken_series"


class SeriesTooLarge(BrokenSeries):
    code = "series_too_large"


class SeriesApart(StudyError):
    code = "series_apart"


class StudyIncomplete(_RetryLater, StudyError):
    """Instances may still be arriving (Retry-After); ``?wait=true`` waits for the study to settle."""

    code = "study_incomplete"


class ResultNotFound(TumorsegError):
    code = "result_not_found"


class ResultPending(_RetryLater):
    code = "result_pending"


class ResultFailed(TumorsegError):
    code = "result_failed"


class InvalidInput(TumorsegError):
    code = "invalid_input"


class ModelError(TumorsegError):
    code = "model_error"


class Busy(_RetryLater):
    code = "busy"


class QueueUnavailable(_RetryLater):
    code = "queue_unavailable"


class DatabaseUnavailable(_RetryLater):
    code = "database_unavailable"


class DatabaseSchemaError(TumorsegError):
    code = "database_schema"


def error_classes(cls: type[TumorsegError] = TumorsegError) -> list[type[TumorsegError]]:
    """``cls`` and every error class below it."""
    return [cls, *(sub for direct in cls.__subclasses__() for sub in error_classes(direct))]


def error_from_code(code: str | None, detail: str | None) -> TumorsegError:
    """The error a job recorded (its ``code`` and ``reason`` in the job store), raised again where the
    caller waits for it (``POST /segment`` in distributed mode); an unknown code is an internal error."""
    by_code = {cls.code: cls for cls in error_classes() if not cls.__name__.startswith("_")}
    cls = by_code.get(code or "", TumorsegError)
    error = cls(detail or "the job failed")
    if cls is TumorsegError:
        error.code = code or "internal_error"
    return error
