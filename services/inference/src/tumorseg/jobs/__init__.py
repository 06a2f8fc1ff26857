"""Jobs: segmentations asked for now and run later, each recorded in the job store from the start.

``Jobs`` (``runner``) is the interface the API, the timeline and the auto-trigger use; ``EmbeddedRunner``
(``embedded``) runs jobs in the API process, ``QueuedRunner`` (``queued``) through the Redis queue
(``queue``) in ``tumorseg worker`` processes.
"""

from __future__ import annotations

from tumorseg.jobs.embedded import EmbeddedRunner
from tumorseg.jobs.queued import QueuedRunner
from tumorseg.jobs.runner import Jobs

__all__ = ["EmbeddedRunner", "Jobs", "QueuedRunner"]
