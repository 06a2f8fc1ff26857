"""The training recipe: one frozen dataclass, recorded verbatim in the package manifest.

``TrainConfig.from_json`` accepts a partial dict (the CLI's ``--config``): unknown keys are refused with
the list of known ones, so a typo cannot silently fall back to a default.

``inputs`` is the ``tumorseg.sequences.InputPolicy`` the package will declare (as JSON; default: all four
required) and ``modality_dropout`` says how training teaches the network to do without its optional
sequences: a mapping ``{sequence: p}`` drops each listed optional sequence independently with its
probability, a number p (the older form) drops one of them, chosen at random, with probability p. A required
sequence is never dropped, nor so many that the policy would refuse what is left (see
``transforms.RandModalityDropoutd``); a rate for a required or unknown sequence is refused here. With
``dropout_per_batch`` the draw is made once per batch and every crop of it lacks the same sequences:
BatchNorm then normalises each batch with the statistics of one input set, as inference does with the
package's ``norms`` (``tumorseg_training.norms``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tumorseg.imaging.preprocess import Preprocessing
from tumorseg.model.network import DEFAULT_UNET_ARGS, stride_product
from tumorseg.sequences import ALL_FOUR, SEQUENCES, InputPolicy

# Keys that may differ between a run and its resumption: they do not change what is learned per step.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "max_steps", "device", "num_threads", "num_workers", "val_every", "log_every"}
)


@dataclass(frozen=True)
class TrainConfig:
    name: str = "tumorseg-unet"
    version: str = "0.1.0"
    data_description: str = ""
    # model
    network: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_UNET_ARGS))
    preprocessing: dict[str, Any] = field(default_factory=lambda: Preprocessing().to_json())
    reference: str = "flair"
    # samples and augmentation (see transforms.py)
    crop_size: tuple[int, int, int] = (96, 96, 96)
    batch_size: int = 2  # crops per optimiser step
    samples_per_case: int = 2  # crops drawn from one case per visit
    class_ratios: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.5)  # crop centres: bg, NCR, ED, ET
    flip_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    # which sequences the package needs (an InputPolicy as JSON) and how often training drops the optional
    # ones: p per sequence {"flair": p, ...}, or one number p (one optional sequence, drawn at random)
    inputs: dict[str, Any] = field(default_factory=ALL_FOUR.to_json)
    modality_dropout: float | dict[str, float] = 0.0
    dropout_per_batch: bool = False  # one draw per batch instead of one per crop
    # Label-1 core contrast jitter (transforms.RandRegionContrastd): with probability core_contrast_prob
    # a crop's core contrast against the normal brain is scaled per channel by a factor drawn from
    # [1 - core_contrast, 1 + core_contrast]; 0 turns it off.
    core_contrast: float = 0.0
    core_contrast_prob: float = 0.5
    # Thick slices (transforms.RandThickSlicesd): each channel with probability thick_slices_prob as a
    # stack of slabs of thick_slices_vox = (low, high) voxels along a random axis, resampled back; 0: off.
    thick_slices_prob: float = 0.0
    thick_slices_vox: tuple[float, float] = (2.0, 5.0)
    # Bias field (transforms.RandBiasFieldd): each channel with probability bias_field_prob times a smooth
    # field of peak |b - 1| up to bias_field_max, as it acts before z-scoring; 0: off.
    bias_field_prob: float = 0.0
    bias_field_max: float = 0.2
    # Cases without enhancing tumour (no label 4: a non-enhancing core, or oedema only) are visited this
    # many times per epoch. They are the rarer profile, and their core looks like neither necrosis nor
    # oedema, so the network sees too few of them otherwise.
    repeat_without_et: int = 1
    # optimisation
    loss: str = "dice_bce"  # "dice" or "dice_bce" (sigmoid Dice + binary cross-entropy per region)
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 20
    epochs: int = 50
    max_steps: int | None = None
    seed: int = 0
    init_from: str | None = None  # a model package folder whose weights start the run (same network)
    ema_decay: float | None = 0.999  # moving average of the weights (validated and shipped); None: off
    bn_batches: int = 64  # batches that fix BatchNorm statistics before validation and at the end
    # validation (sliding window over whole held-out cases; expensive, so every few epochs)
    val_fraction: float = 0.1
    val_every: int = 5  # epochs; the last epoch is always validated
    # inference, recorded in the package
    roi_size: tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.25
    threshold: float = 0.5
    min_enhancing_ml: float = 0.0  # a smaller enhancing region becomes necrotic core (0: off)
    # execution
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision, CUDA only
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default
    num_workers: int = 0  # DataLoader worker processes
    log_every: int = 50  # steps between progress log lines

    def __post_init__(self) -> None:
        problems = []
        factor = stride_product(self.network)
        if any(s % factor for s in self.crop_size):
            problems.append(f"crop_size {self.crop_size} must divide by {factor} (the network strides)")
        if any(s % factor for s in self.roi_size):
            problems.append(f"roi_size {self.roi_size} must divide by {factor} (the network strides)")
        prep = Preprocessing.from_json(self.preprocessing)
        if prep.divisible_by % factor:
            problems.append(f"preprocessing.divisible_by must be a multiple of {factor}")
        if self.batch_size < 1 or self.samples_per_case < 1 or self.batch_size % self.samples_per_case:
            problems.append("batch_size must be a positive multiple of samples_per_case")
        if self.loss not in ("dice", "dice_bce"):
            problems.append(f"loss must be 'dice' or 'dice_bce', got {self.loss!r}")
        if self.reference not in SEQUENCES:
            problems.append(f"reference must be one of {SEQUENCES}")
        try:
            policy = InputPolicy.from_json(self.inputs)
        except (TypeError, ValueError, AttributeError) as exc:
            problems.append(str(exc))
        else:
            problems += dropout_problems(self.modality_dropout, policy)
        if self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            problems.append("epochs and max_steps must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append("val_fraction must be in [0, 1)")
        if not 0.0 <= self.core_contrast < 1.0 or not 0.0 <= self.core_contrast_prob <= 1.0:
            problems.append("core_contrast must be in [0, 1) and core_contrast_prob in [0, 1]")
        low, high = self.thick_slices_vox
        if not 0.0 <= self.thick_slices_prob <= 1.0 or not 1.0 <= low <= high:
            problems.append("thick_slices_prob must be in [0, 1] and thick_slices_vox 1 <= low <= high")
        if not 0.0 <= self.bias_field_prob <= 1.0 or not 0.0 <= self.bias_field_max < 1.0:
            problems.append("bias_field_prob must be in [0, 1] and bias_field_max in [0, 1)")
        if self.min_enhancing_ml < 0:
            problems.append("min_enhancing_ml must be >= 0")
        if self.repeat_without_et < 1:
            problems.append("repeat_without_et must be >= 1")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            problems.append("ema_decay must be in (0, 1) or null")
        if self.val_every < 1 or self.log_every < 1:
            problems.append("val_every and log_every must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append("device must be auto, cpu or cuda")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def cases_per_step(self) -> int:
        return self.batch_size // self.samples_per_case

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_json(self.preprocessing)

    @property
    def input_policy(self) -> InputPolicy:
        return InputPolicy.from_json(self.inputs)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in ("crop_size", "roi_size", "class_ratios", "thick_slices_vox"):
            if key in values:
                values[key] = tuple(values[key])
        if "network" in values:
            values["network"] = {**DEFAULT_UNET_ARGS, **values["network"]}
        if "preprocessing" in values:
            values["preprocessing"] = Preprocessing.from_json(values["preprocessing"]).to_json()
        if isinstance(values.get("inputs"), Mapping):
            try:
                policy = InputPolicy.from_json(values["inputs"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"invalid training config: {exc}") from exc
            if sorted(policy.named) != sorted(SEQUENCES):  # tumorseg's network takes all four channels
                raise ValueError(
                    f"invalid training config: inputs must name each of {list(SEQUENCES)} (required or "
                    f"optional), got {list(policy.named)}"
                )
            values["inputs"] = policy.to_json()
        if isinstance(values.get("modality_dropout"), Mapping):
            values["modality_dropout"] = dict(values["modality_dropout"])
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def differences(self, other: TrainConfig) -> list[str]:
        """Keys whose values differ and that a resumed run may not change."""
        mine, theirs = self.to_json(), other.to_json()
        return sorted(k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k])


def droppable(policy: InputPolicy) -> tuple[str, ...]:
    """The optional sequences whose absence alone the policy accepts (what a number ``modality_dropout``
    chooses from)."""
    return tuple(m for m in policy.optional if policy.problem(s for s in SEQUENCES if s != m) is None)


def dropout_problems(dropout: float | Mapping[str, float], policy: InputPolicy) -> list[str]:
    """Why ``dropout`` (a ``modality_dropout`` value) does not fit ``policy`` (empty: it does)."""
    if isinstance(dropout, Mapping):
        problems = []
        unknown = sorted(str(m) for m in dropout if m not in SEQUENCES)
        if unknown:
            problems.append(f"modality_dropout names unknown sequence(s) {unknown}; known: {list(SEQUENCES)}")
        required = [m for m in dropout if m in policy.required]
        if required:
            problems.append(
                f"modality_dropout gives a rate for required sequence(s) {required}: a required sequence is "
                f"never dropped (inputs.optional: {list(policy.optional)})"
            )
        rates = list(dropout.values())
        if not all(isinstance(p, int | float) and not isinstance(p, bool) for p in rates) or not all(
            0.0 <= float(p) <= 1.0 for p in rates
        ):
            problems.append("modality_dropout rates must be numbers in [0, 1]")
        return problems
    if isinstance(dropout, bool) or not isinstance(dropout, int | float):
        return [f"modality_dropout must be a number or a {{sequence: p}} mapping, got {dropout!r}"]
    if not 0.0 <= float(dropout) <= 1.0:
        return ["modality_dropout must be in [0, 1]"]
    if dropout > 0 and not droppable(policy):
        return [
            f"modality_dropout {dropout} would drop a required sequence: with inputs requiring "
            f"{policy.describe() or 'every sequence'} no sequence may be dropped; declare the ones the model "
            "may do without in inputs.optional, or set modality_dropout to 0"
        ]
    return []
