"""The browser pages: ``GET /`` (the recent results), ``GET /results/{result_id}/viewer`` (NiiVue) and
``GET /patients/{patient_id}/timeline/view`` (volumes over time, plain SVG).

All are static shells, the same bytes for every caller: no patient data, so they need no API key. Their
scripts ask for the key once per tab when the service has one (a 401 answer), keep it in
``sessionStorage``, and send it as the ``X-API-Key`` header with every data request (result JSON,
volumes, thumbnails), never in a URL. NiiVue is vendored under ``/static/vendor`` (see its NIIVUE.md):
nothing is loaded from another host, and the Content-Security-Policy below forbids it.

``GET /docs`` is Swagger UI, vendored the same way (``/static/vendor/swagger-ui``, see its SWAGGER.md) and
started by ``static/docs.js``: FastAPI's own page loads it from a CDN (blank on a closed hospital network)
with an inline script. ReDoc is switched off (``redoc_url=None`` in main.py): it loads web fonts from
another host, and one API page is enough.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse

from tumorseg.results import check_result_id

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Scripts and styles from this origin only; images and fetches from it and from blob:/data: URLs (the
# thumbnails are fetched with the key and shown as blob: URLs; NiiVue's font atlas is a data: URL).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self' blob: data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# The same for Swagger UI, except that it writes style attributes (e.g. the alignment of a Markdown table in
# a description): allowed for attributes only, not for <style> elements nor for scripts.
DOCS_SECURITY_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": SECURITY_HEADERS["Content-Security-Policy"].replace(
        "style-src 'self';", "style-src 'self'; style-src-attr 'unsafe-inline';"
    ),
}

router = APIRouter(tags=["pages"])


def _page(name: str, headers: dict[str, str] = SECURITY_HEADERS) -> HTMLResponse:
    return HTMLResponse((STATIC_DIR / name).read_text(encoding="utf-8"), headers=headers)


@router.get("/", response_class=HTMLResponse)
def results_page() -> HTMLResponse:
    """The most recent results with their preview thumbnails, each linking to its viewer (paged)."""
    return _page("results.html")


@router.get("/results/{result_id}/viewer", response_class=HTMLResponse)
def viewer_page(
    result_id: Annotated[str, PathParam(description="32 hexadecimal digits, as returned by POST /segment")],
) -> HTMLResponse:
    """The reference series with the mask overlaid (axial, coronal, sagittal, 3D), label toggles,
    overlay opacity, the volumes, series and model of the result."""
    check_result_id(result_id)  # a malformed id is a 404 here too; an unknown one is the script's 404
    return _page("viewer.html")


@router.get("/patients/{patient_id}/timeline/view", response_class=HTMLResponse)
def timeline_page(
    patient_id: Annotated[str, PathParam(description="the DICOM PatientID; the page's script reads it")],
) -> HTMLResponse:
    """The patient's tumour volumes over time (a chart, each point linking to its viewer) and their change
    as a table, research use only. The same shell for every patient: the script asks for the data."""
    return _page("timeline.html")


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def docs_page() -> HTMLResponse:
    """Swagger UI on ``/openapi.json``, from this service alone ("Authorize" takes the X-API-Key)."""
    return _page("docs.html", DOCS_SECURITY_HEADERS)
