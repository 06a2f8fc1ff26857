"""``tumorseg model``: import models published in other formats as tumorseg packages, and describe a package.

- ``tumorseg model info PACKAGE``: name, version, backend, channels, inputs and provenance.
- ``tumorseg model import-bundle BUNDLE_DIR --out PACKAGE``: a MONAI bundle (``tumorseg.model.bundle``).
- ``tumorseg model import-nnunet FOLDER --out PACKAGE``: an nnU-Net v2 result folder (``tumorseg.model.import_nnunet``).

Each command is a thin shell around one library function; a model that cannot be imported exits 2 with
the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from tumorseg.errors import TumorsegError

app = typer.Typer(
    help="Import MONAI bundles and nnU-Net v2 models; describe a model package.", no_args_is_help=True
)
console = Console()
err_console = Console(stderr=True)


def _fail(exc: TumorsegError) -> NoReturn:
    err_console.print(f"[red]error:[/red] {exc.detail}")
    raise typer.Exit(2)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    """``["T1c=t1ce", ...]`` as a dict; exits 2 on a value without ``=``."""
    pairs = {}
    for value in values:
        key, sep, target = value.partition("=")
        if not sep or not key or not target:
            err_console.print(f"[red]error:[/red] {what} {value!r} must be NAME=VALUE")
            raise typer.Exit(2)
        pairs[key] = target
    return pairs


ChannelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--channel",
        help="Map an input channel by hand: NAME_OR_INDEX=flair|t1|t1ce|t2 (repeatable); the others by name.",
    ),
]
LabelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--label", help="Map an output class of a label-map model: INDEX=ncr|ed|et|background|drop."
    ),
]


@app.command()
def info(
    package: Annotated[Path, typer.Argument(help="A model package directory (model.json).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Name, version, backend, channels, inputs and provenance of a model package."""
    from tumorseg.model.package import read_manifest

    try:
        manifest = read_manifest(package)
    except TumorsegError as exc:
        _fail(exc)
    described = {
        **manifest.describe(),
        "channels": list(manifest.preprocessing.channels),
        "inputs": manifest.inputs.to_json(),
        "spacing_mm": manifest.preprocessing.spacing_mm,
        "metrics": manifest.metrics,
    }
    if as_json:
        console.print_json(json.dumps(described))
        return
    console.print(f"[bold]{manifest.name}[/bold] {manifest.version}  backend: {manifest.backend}")
    console.print(
        f"channels: {', '.join(manifest.preprocessing.channels)}  (needs {manifest.inputs.describe()})"
    )
    for key, value in manifest.provenance.items():
        console.print(f"  {key}: {value}")


@app.command("import-bundle")
def import_bundle(
    bundle: Annotated[Path, typer.Argument(help="The MONAI bundle directory (configs/, models/).")],
    out: Annotated[Path, typer.Option(help="Where to write the tumorseg package.")],
    channel: ChannelOption = None,
    label: LabelOption = None,
    name: Annotated[str | None, typer.Option(help="The package's name (default: the bundle's).")] = None,
) -> None:
    """Import a MONAI bundle (e.g. the model zoo's brats_mri_segmentation) as a tumorseg model package."""
    from tumorseg.model.bundle import import_bundle as run_import

    try:
        written = run_import(
            bundle,
            out,
            channels=_pairs(channel or [], "--channel"),
            labels=_pairs(label or [], "--label"),
            name=name,
        )
    except TumorsegError as exc:
        _fail(exc)
    console.print(
        f"model package written to {written}; check its licence and training data: tumorseg model info {written}"
    )


@app.command("import-nnunet")
def import_nnunet(
    folder: Annotated[
        Path, typer.Argument(help="An nnU-Net v2 Trainer__Plans__Configuration folder or its export zip.")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the tumorseg package.")],
    folds: Annotated[
        list[str] | None, typer.Option("--folds", help="Folds to use (repeatable; 'all' for fold_all).")
    ] = None,
    checkpoint: Annotated[
        str, typer.Option(help="The checkpoint file in each fold.")
    ] = "checkpoint_final.pth",
    channel: ChannelOption = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            help="Map an output by hand: NAME_OR_VALUE=ncr|ed|et|background|drop for label-based models, "
            "REGION_NAME=tc|wt|et|drop for region-based ones (repeatable); the others by name.",
        ),
    ] = None,
    regions_from: Annotated[
        str,
        typer.Option(
            help="Label-based models: TC/WT/ET from summed 'probabilities' or from nnU-Net's 'labels' map."
        ),
    ] = "probabilities",
    mirroring: Annotated[
        str, typer.Option(help="Test-time mirroring: 'cuda' (on CUDA only), 'always' or 'never'.")
    ] = "cuda",
    name: Annotated[str | None, typer.Option(help="The package's name (default: from the dataset).")] = None,
) -> None:
    """Import an nnU-Net v2 model (its own predictor runs it; needs the nnunet extra) as a tumorseg package."""
    from tumorseg.model.import_nnunet import import_nnunet as run_import

    try:
        written = run_import(
            folder,
            out,
            folds=tuple(folds or ("0",)),
            checkpoint=checkpoint,
            channels=_pairs(channel or [], "--channel"),
            labels=_pairs(label or [], "--label"),
            regions_from=regions_from,
            mirroring=mirroring,
            name=name,
        )
    except TumorsegError as exc:
        _fail(exc)
    console.print(
        f"model package written to {written}; check its licence and training data: tumorseg model info {written}"
    )
