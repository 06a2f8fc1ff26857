"""When a study is complete, for a PACS that cannot say (DICOMweb): the stability rule of its change feed.

A study whose images version (``Pacs.images_version``) is the same in two polls at least ``stable_s``
apart is complete. A complete study is reported in each batch until a cursor given after that batch comes
back (the caller handled it), and again once its version changes and settles. The state lives in this
object (one process's memory): a cursor from another object, or from before a restart, acknowledges
nothing, and the watch starts afresh.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping

_PREFIX = "poll"


class QuietStudies:
    """The stability rule over successive polls of the studies' images versions (see the module docstring)."""

    def __init__(self, stable_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stable_s = stable_s
        self._clock = clock
        self._token = uuid.uuid4().hex[:12]  # whose cursors this object recognises
        self._polls = 0
        self._seen: dict[str, tuple[str, float]] = {}  # study UID → (images version, first seen at)
        self._reported: dict[str, tuple[str, int]] = {}  # study UID → (images version, poll reporting it)

    def poll(self, versions: Mapping[str, str], cursor: str | None) -> tuple[list[str], str]:
        """The studies of this poll (study UID → images version) now complete and not yet acknowledged by
        ``cursor``, in the order given, and the cursor that acknowledges them. A study missing from a
        poll is forgotten (it left the polled window, or was deleted)."""
        acknowledged = self._acknowledged(cursor)
        self._polls += 1
        now = self._clock()
        seen: dict[str, tuple[str, float]] = {}
        reported: dict[str, tuple[str, int]] = {}
        ready = []
        for uid, version in versions.items():
            before = self._seen.get(uid)
            if before is None or before[0] != version:  # new, or still receiving instances
                seen[uid] = (version, now)
                continue
            seen[uid] = before
            if now - before[1] < self.stable_s:
                continue
            told = self._reported.get(uid)
            if told is not None and told[0] == version and told[1] <= acknowledged:
                reported[uid] = told
                continue
            reported[uid] = (version, self._polls)
            ready.append(uid)
        self._seen, self._reported = seen, reported
        return ready, f"{_PREFIX}:{self._token}:{self._polls}"

    def _acknowledged(self, cursor: str | None) -> int:
        """The poll a cursor of this object acknowledges; -1 for none, another's or a damaged one."""
        prefix, _, rest = (cursor or "").partition(":")
        token, _, polls = rest.partition(":")
        if prefix != _PREFIX or token != self._token or not polls.isdigit():
            return -1
        return min(int(polls), self._polls)
