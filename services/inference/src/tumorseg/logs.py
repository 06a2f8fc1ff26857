"""Logging set-up: every record carries the request id of the HTTP request it belongs to.

Library code only calls ``logging.getLogger(__name__)``; the service and the CLI call ``configure``.
Patient names and birth dates are never passed to a logger anywhere in tumorseg.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger("tumorseg")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
