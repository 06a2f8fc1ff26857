"""``GET /health``: never fails because the PACS is down — it says ``degraded`` instead. ``orthanc``
reports the PACS, Orthanc REST or DICOMweb (``version`` null over DICOMweb)."""

from __future__ import annotations

from fastapi import APIRouter

from tumorseg.api.deps import StateDep
from tumorseg.api.schemas import Health, ModelHealth, OrthancHealth, QueueHealth
from tumorseg.errors import PacsError

router = APIRouter(tags=["health"])

# /health is polled by orchestrators; it must answer quickly even when Orthanc hangs.
HEALTH_PACS_TIMEOUT_S = 3.0


@router.get("/health", response_model=Health)
def health(state: StateDep) -> Health:
    try:
        reachable, version = True, state.pacs.version(timeout=HEALTH_PACS_TIMEOUT_S)
    except PacsError:
        reachable, version = False, None  # over DICOMweb a reachable PACS has no version either
    queue = state.job_runner().queue_reachable(HEALTH_PACS_TIMEOUT_S)
    queue_health = None if queue is None else QueueHealth(reachable=queue)
    return Health(
        status="ok"
        if reachable and state.model.loaded and (queue_health is None or queue_health.reachable)
        else "degraded",
        orthanc=OrthancHealth(reachable=reachable, version=version),
        queue=queue_health,
        model=ModelHealth(
            name=state.model.name,
            loaded=state.model.loaded,
            version=state.model.version,
            backend=state.model.backend,
            provenance=state.model.provenance,
            fast_path=None if state.predictor is None else state.predictor.fast_path,
        ),
        device=state.device,
    )
