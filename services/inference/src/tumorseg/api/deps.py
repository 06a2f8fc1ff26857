"""What route functions get injected: the application state built in ``lifespan``, and the API-key check."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from tumorseg.api.urls import result_links
from tumorseg.config import Settings
from tumorseg.errors import ModelError
from tumorseg.jobs import Jobs
from tumorseg.model.device import Device
from tumorseg.model.predictor import Predictor
from tumorseg.pacs import Pacs
from tumorseg.pipeline import Segmenter
from tumorseg.results import ResultStore
from tumorseg.wiring import build_segmenter


@dataclass
class ModelState:
    """What /health reports of the model: its package name and whether it is loaded."""

    name: str
    loaded: bool = False
    version: str | None = None
    backend: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class AppState:
    settings: Settings
    pacs: Pacs
    model: ModelState
    device: Device
    store: ResultStore
    jobs: Jobs | None = None
    predictor: Predictor | None = None
    model_error: str | None = None
    _segmenter: Segmenter | None = None

    def segmenter(self) -> Segmenter:
        """The pipeline; ``ModelError`` (503) while no model package could be loaded."""
        if self._segmenter is None:
            if self.predictor is None:
                raise ModelError(self.model_error or "no model is loaded")
            self._segmenter = build_segmenter(
                self.settings, self.pacs, self.predictor, self.store, result_links
            )
        return self._segmenter

    def job_runner(self) -> Jobs:
        assert self.jobs is not None, "set in lifespan"
        return self.jobs


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.tumorseg
    return state


StateDep = Annotated[AppState, Depends(get_state)]

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Needed when TUMORSEG_API_KEY is set."
)


def require_api_key(state: StateDep, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    expected = state.settings.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")
