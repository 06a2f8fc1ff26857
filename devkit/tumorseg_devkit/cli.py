"""``tumorseg phantom``, ``tumorseg phantom-followup`` and ``tumorseg to-dicom``: the development kit's
commands, added to the ``tumorseg`` CLI through the entry point ``tumorseg.cli`` (see
``devkit/pyproject.toml``), so the service package never imports the phantom generator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add ``phantom``, ``phantom-followup`` and ``to-dicom`` to ``app`` (the ``tumorseg`` Typer app)."""
    app.command("phantom-followup")(phantom_followup)
    app.command("to-dicom")(to_dicom)
    app.command()(phantom)


def phantom_followup(
    out: Annotated[
        Path, typer.Option(help="Folder for the visits (BraTS layout) and, with --patient-id, DICOM.")
    ],
    seed: Annotated[int, typer.Option(min=0, help="The patient: the same seed is the same head.")] = 0,
    factors: Annotated[
        str,
        typer.Option(help="tumour volume of each visit relative to the phantom of the seed, comma-separated"),
    ] = "1.0,1.6,0.3",
    patient_id: Annotated[
        str | None, typer.Option(help="also write each visit as a DICOM study of this patient")
    ] = None,
) -> None:
    """Follow-up phantoms of one patient: the same head, the tumour scaled by a known factor at each
    visit, three months apart, positioned differently; truth.json per visit holds the truth volumes."""
    from tumorseg_devkit.synth.followup import write_followups

    try:
        scale = tuple(float(f) for f in factors.split(","))
        folders = write_followups(out, seed, scale, patient_id=patient_id)
    except ValueError as exc:
        err_console.print(f"[red]error[/red] --factors: {exc}")
        raise typer.Exit(code=2) from exc
    for folder in folders:
        console.print(f"visit: {folder}")


def to_dicom(
    case_dir: Annotated[Path, typer.Argument(help="BraTS case folder: <case>_{flair,t1,t1ce,t2}.nii.gz.")],
    patient_id: Annotated[str, typer.Option("--patient-id", help="PatientID written to every file.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder (study-N/<series>/IM_NNNN.dcm, manifest.json).")
    ],
    plane: Annotated[
        list[str] | None,
        typer.Option(help="axial|sagittal|coronal, or MOD:PLANE (MOD: flair|t1|t1ce|t2). Repeatable."),
    ] = None,
    tilt: Annotated[
        list[str] | None,
        typer.Option(
            help="Oblique slices: DEG or MOD:DEG, rotation about the image X axis (AC-PC style). Repeatable."
        ),
    ] = None,
    spacing: Annotated[
        list[str] | None,
        typer.Option(
            help="X,Y,Z or MOD:X,Y,Z mm (column, row, slice spacing); resamples linearly. Repeatable."
        ),
    ] = None,
    reverse_slices: Annotated[
        list[str] | None,
        typer.Option(help="InstanceNumber 1 at the far end of the normal: all, or MOD[,MOD]."),
    ] = None,
    description: Annotated[
        list[str] | None, typer.Option(help="MOD:TEXT overrides a SeriesDescription.")
    ] = None,
    decoys: Annotated[bool, typer.Option(help="Add a 3-plane localizer, a DWI and an ADC series.")] = False,
    prior_study: Annotated[
        bool, typer.Option(help="Add an older study (one year earlier) with its own four series.")
    ] = False,
    patient_name: Annotated[str, typer.Option(help="PatientName, DICOM PN (FAMILY^GIVEN).")] = "PHANTOM^DEMO",
    birth_date: Annotated[str, typer.Option(help="PatientBirthDate, YYYYMMDD.")] = "19680517",
    sex: Annotated[str, typer.Option(help="PatientSex: M, F or O.")] = "O",
    study_date: Annotated[str, typer.Option(help="StudyDate, YYYYMMDD.")] = "20240312",
    transfer_syntax: Annotated[
        str, typer.Option(help="explicit (little endian), rle or jpeg2000 (lossless).")
    ] = "explicit",
    vendor: Annotated[str, typer.Option(help="Naming and physics style: siemens or ge.")] = "siemens",
) -> None:
    """Write a BraTS case (real or synthetic) as four DICOM MR series of one study."""
    from tumorseg import logs
    from tumorseg.errors import InvalidInput
    from tumorseg_devkit.synth.dicom_options import parse_date, parse_descriptions, parse_geometry
    from tumorseg_devkit.synth.to_dicom import ConversionOptions, convert_case

    logs.configure()
    try:
        options = ConversionOptions(
            geometry=parse_geometry(plane or (), tilt or (), spacing or (), reverse_slices or ()),
            descriptions=parse_descriptions(description or ()),
            decoys=decoys,
            prior_study=prior_study,
            patient_name=patient_name,
            birth_date=parse_date(birth_date, "--birth-date"),
            patient_sex=sex.upper(),
            study_date=parse_date(study_date, "--study-date"),
            transfer_syntax=transfer_syntax,  # type: ignore[arg-type]  # validated by ConversionOptions
            vendor=vendor,  # type: ignore[arg-type]
        )
        result = convert_case(case_dir, patient_id, out, options)
    except InvalidInput as exc:
        err_console.print(f"[red]error[/red] {exc.detail}")
        raise typer.Exit(code=2) from exc
    for study in result.studies:
        console.print(f"study {study.study_instance_uid} ({study.study_date:%Y-%m-%d}) -> {study.folder}")
        for s in study.series:
            console.print(f"  {s.series_number:>2} {s.key:<9} {s.n_files:>4} files  {s.series_description}")
    console.print(f"manifest: {result.manifest}")


def phantom(
    out: Annotated[Path, typer.Option(help="Folder that receives one BraTS2021_NNNNN folder per case.")],
    cases: Annotated[int, typer.Option(min=1, max=100_000, help="Number of cases.")] = 1,
    seed: Annotated[int, typer.Option(min=0, help="Run seed; case k of a seed is always the same.")] = 0,
    start_index: Annotated[
        int, typer.Option(min=0, max=99_999, help="Index of the first case (its id and its seed).")
    ] = 0,
    kind: Annotated[
        Literal["brats", "clinical-head"],
        typer.Option(
            help="brats: skull-stripped, co-registered 240x240x155 volumes. clinical-head: the same brain "
            "and tumour in a whole head (skull, scalp, eyes, neck) on 240x256x256, each series with its own "
            "patient motion, bias field and Rician noise; truth/ holds per-series labels, brain masks and "
            "motion.json."
        ),
    ] = "brats",
    motion: Annotated[
        str | None,
        typer.Option(
            help="clinical-head only: how far each series' patient moves from rest, DEG,MM (up to DEG degrees "
            "and MM millimetres, e.g. 7.5,15) or DEG0-DEG1,MM0-MM1 (within ranges); default 5,5. The brain "
            "stays inside every series' field of view."
        ),
    ] = None,
) -> None:
    """Write synthetic BraTS-2021-layout cases (FLAIR, T1, T1ce, T2, seg; 1 mm): skull-stripped BraTS-like
    volumes, or with --kind clinical-head whole-head series as a scanner delivers them."""
    if start_index + cases > 100_000:
        err_console.print("[red]error[/red] case ids have five digits: start-index + cases must be <= 100000")
        raise typer.Exit(code=2)
    if motion is not None and kind != "clinical-head":
        err_console.print("[red]error[/red] --motion applies to --kind clinical-head only")
        raise typer.Exit(code=2)

    def report(index: int, folder: Path) -> None:
        console.print(f"case {index - start_index + 1}/{cases}: {folder}")

    if kind == "brats":
        from tumorseg_devkit.synth.phantom import write_cases

        folders = write_cases(out, cases=cases, seed=seed, start_index=start_index, progress=report)
    else:
        from dataclasses import asdict

        from tumorseg_devkit.synth.phantom_head import MotionRange, write_head_cases

        try:
            limits = asdict(MotionRange.parse(motion)) if motion is not None else {}
        except ValueError as exc:
            err_console.print(f"[red]error[/red] --motion: {exc}")
            raise typer.Exit(code=2) from exc
        folders = write_head_cases(
            out, cases=cases, seed=seed, start_index=start_index, progress=report, **limits
        )
    console.print(f"{len(folders)} case(s) written under {out}")
