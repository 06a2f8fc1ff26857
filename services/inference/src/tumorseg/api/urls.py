"""The URLs of a result, built here alone (they name this API's routes, ``routes/results.py`` and
``routes/pages.py``): the file and viewer links of the result JSON, and a result's own URL.

The result JSON carries its links wherever it is written: the ``Segmenter`` is given ``result_links``
by whoever builds it (the API's lifespan, ``tumorseg worker``, ``tumorseg segment``), so a result made by a
worker or by the CLI holds the same links as one made in the API process.
"""

from __future__ import annotations

from tumorseg.pipeline import ResultLinks
from tumorseg.schema import Job
from tumorseg.timeline import Timeline


def result_url(result_id: str) -> str:
    """``GET /results/{result_id}``: the result JSON."""
    return f"/results/{result_id}"


def linked_job(job: Job) -> Job:
    """A job as the API answers it: a done job names its result's URL."""
    return job.model_copy(update={"result_url": result_url(job.result_id) if job.state == "done" else None})


def linked_timeline(timeline: Timeline) -> Timeline:
    """A timeline as the API answers it: each segmented study links its result's viewer."""
    for entry in timeline.studies:
        entry.viewer_url = result_links(entry.result_id).viewer_url if entry.result_id else None
    return timeline


def result_links(result_id: str) -> ResultLinks:
    """The mask, preview, reference volume and viewer page of a result."""
    base = result_url(result_id)
    return ResultLinks(
        mask_url=f"{base}/mask.nii.gz",
        preview_url=f"{base}/preview.png",
        reference_url=f"{base}/reference.nii.gz",
        viewer_url=f"{base}/viewer",
    )
