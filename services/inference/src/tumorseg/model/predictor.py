"""Configure → load → predict. The service builds one ``Predictor`` at start-up and reuses it.

``predict`` takes a ``ModelInput`` (float32 (4, I, J, K) on the cropped model grid, see
``tumorseg.imaging.preprocess``; a missing sequence's channel is its substitute's when the package's
``inputs`` name one, see ``network_input``) and returns region probabilities, float32 (3, I, J, K) in the order
TC, WT, ET, on the same grid; ``mask`` turns them into the package's BraTS label mask on a series' lattice.
Inference runs under ``torch.inference_mode`` with MONAI sliding windows,
with autocast on CUDA. It holds no lock of its own: ``Segmenter`` is the one place that decides
concurrency, and it runs one request at a time on the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from tumorseg.imaging.brain import confine_to_brain
from tumorseg.imaging.postprocess import to_reference_mask
from tumorseg.imaging.preprocess import ModelInput
from tumorseg.model.foreign import check_probabilities
from tumorseg.model.network import for_inference, stride_product
from tumorseg.model.package import ModelManifest, load_package, missing_key, norms_keys
from tumorseg.sequences import fill_absent

log = logging.getLogger(__name__)

WARM_UP_WINDOW = (160, 224, 192)  # the largest window Predictor.warm_up runs: an adult brain crop

# The fused CPU path (``tumorseg.model.fused``) calls operators private to torch, so every package loaded
# with it is run once both ways on seeded noise (1, C, s, 2s, 3s), s = 16 rounded up to the strides'
# product. The logits differ by float32 rounding alone: on the shipped model at most 2.7e-5 where the
# largest is ~47, 6e-7 of it, on every network and input tried. A broken operator (a wrong post-op, a
# misplaced output phase, an argument read differently by another torch) changes them by orders more.
# Allowed: 1e-4 of the largest plain logit (at least 1e-4): ~200x that rounding, and at most 2.5e-5 of
# it in probability (the sigmoid's slope is at most 1/4), far from moving a voxel across the threshold.
FUSED_TOLERANCE = 1e-4
FUSED_CHECK_SIDE = 16


class Predictor:
    def __init__(
        self,
        manifest: ModelManifest,
        network: Any,
        device: str,
        fallback: Any = None,
        variants: Mapping[str, Any] | None = None,
        fast: bool = False,
        fast_path: str = "off",
    ) -> None:
        self.manifest = manifest
        # What /health reports: "fused" (the oneDNN fused CPU path, checked at load), "plain (why)" (it
        # disagreed with the plain network at load and was replaced by it) or "off" (not used here)
        self.fast_path = fast_path
        # One window over a crop it covers runs without MONAI's sliding-window bookkeeping (``_one_window``)
        self.fast = fast
        self.network = network
        self.fallback = fallback  # the package's network for studies that lack a sequence, if it has one
        # "<network>/<missing_key>": that network with the BatchNorm statistics of those sequences missing
        self.variants = dict(variants or {})
        self.device = device

    @classmethod
    def from_package(cls, directory: Path, device: str = "cpu", fast: bool = True) -> Predictor:
        """The package's networks; with ``fast`` (the default), each ``for_inference``: BatchNorm folded and,
        on the CPU, channels-last (the same probabilities to ~1e-6, ~1.3x faster here), and a crop that one
        window covers predicted in that window directly (``_one_window``). On the CPU the fused blocks are
        then compared with the plain ones (``guard_fused``): where they disagree, the plain network runs.
        ``fast=False`` is the plain network under MONAI's sliding window, the reference the fast path is
        tested against."""
        manifest, networks = load_package(directory, device)
        if manifest.foreign:
            log.info(
                "model %s %s (%s) loaded on %s", manifest.name, manifest.version, manifest.backend, device
            )
            return ForeignPredictor(manifest, networks["main"], device)
        fast_path = "off"
        if fast:
            networks = {name: for_inference(network, device) for name, network in networks.items()}
            fast_path = guard_fused(networks, manifest)
        log.info(
            "model %s %s loaded on %s%s",
            manifest.name,
            manifest.version,
            device,
            " (with a fallback network for studies that lack a sequence)" if "fallback" in networks else "",
        )
        variants = {name: net for name, net in networks.items() if "/" in name}
        main, fallback = networks["main"], networks.get("fallback")
        return cls(manifest, main, device, fallback, variants, fast=fast, fast_path=fast_path)

    @property
    def name(self) -> str:
        return self.manifest.name

    def predict(self, model_input: ModelInput) -> NDArray[np.float32]:
        import torch
        from monai.inferers import sliding_window_inference

        config = self.manifest.inference
        # A window larger than the (cropped) volume would only add padding work; keep it divisible.
        factor = stride_product(self.manifest.architecture_args)
        roi = tuple(
            max(factor, min(r, -(-s // factor) * factor))
            for r, s in zip(config.roi_size, model_input.array.shape[1:], strict=True)
        )
        network = self._network(model_input)
        tensor = torch.from_numpy(self.network_input(model_input)[None]).to(self.device)
        layout = torch.channels_last_3d if self.device == "cpu" else torch.contiguous_format
        autocast = torch.autocast("cuda") if self.device == "cuda" else nullcontext()
        with torch.inference_mode(), autocast:
            inside: tuple[slice, ...] = (slice(None),) * 5
            if self.fast and all(r >= s for r, s in zip(roi, tensor.shape[2:], strict=True)):
                logits, inside = _one_window(network, tensor, roi, layout)
            else:
                logits = sliding_window_inference(
                    tensor.contiguous(memory_format=layout),
                    roi_size=roi,
                    sw_batch_size=config.sw_batch_size,
                    predictor=network,
                    overlap=config.overlap,
                    mode="gaussian",
                )
                assert isinstance(logits, torch.Tensor)
            # The sigmoid in place over the logits as laid out (vectorised; over the cropped view of a
            # channels-last window it reads with strides, 4x slower), then one copy of the crop.
            probabilities = logits.float().sigmoid_()[inside][0].contiguous()
        return np.asarray(probabilities.cpu().numpy(), dtype=np.float32)

    def network_input(self, model_input: ModelInput) -> NDArray[np.float32]:
        """``model_input.array`` with each missing sequence's channel as the package's ``inputs`` make it: its
        substitute's channel where it has one (a copy then), zeros otherwise (``prepare`` wrote those)."""
        stand_ins = self.manifest.inputs.stand_ins(self.manifest.preprocessing.channels, model_input.present)
        if all(source is None for _, source in stand_ins):
            return model_input.array
        return fill_absent(model_input.array.copy(), stand_ins)

    def _network(self, model_input: ModelInput) -> Any:
        name = self.network_for(model_input)
        lacking = missing_key(self.manifest.preprocessing.channels, model_input.present)
        base = self.fallback if name == "fallback" else self.network
        return self.variants.get(f"{name}/{lacking}", base)

    def network_for(self, model_input: ModelInput) -> str:
        """ "main", or "fallback" for an input that lacks a sequence when the package has a fallback."""
        return self.manifest.network_for(model_input.present) if self.fallback is not None else "main"

    def mask(
        self,
        probabilities: NDArray[np.float32],
        model_grid: sitk.Image,
        reference_image: sitk.Image,
        brain: NDArray[np.bool_] | None = None,
        rim_mm: float = 0.0,
    ) -> sitk.Image:
        """``predict``'s probabilities on ``model_grid`` as the package's BraTS label mask on ``reference_image``'s
        lattice (``to_reference_mask`` with the manifest's threshold and enhancing minimum); with ``brain``
        (on ``model_grid``, e.g. ``ModelInput.brain``), nothing outside it, and with ``rim_mm`` > 0 no tumour
        component that lies only in its outer rim (``brain.confine_to_brain``; for an extracted brain)."""
        if brain is not None:
            spacing_mm = float(model_grid.GetSpacing()[0])
            probabilities = confine_to_brain(
                probabilities, brain, self.manifest.threshold, spacing_mm, rim_mm
            )
        return to_reference_mask(
            probabilities,
            model_grid,
            reference_image,
            self.manifest.threshold,
            min_enhancing_ml=self.manifest.min_enhancing_ml,
        )

    def warm_up(self) -> None:
        """One forward pass per network, so the first request does not pay for lazy initialisation (thread
        pool, allocator, oneDNN's or cuDNN's kernels): the main network and the fallback on one window of the
        package's ``roi_size``, at most ``WARM_UP_WINDOW``, each BatchNorm variant on a tiny input (the same
        convolutions, other constants). The window is an adult brain's crop at 1 mm (the clinical phantom's)
        because the first window of that size grows the process's heap to hold its activations
        (``tumorseg.memory``): measured in the service, a first request after a 128³ warm-up ran the network
        in 0.80 s against 0.25 s later, after this one 0.28 s (~0.4 s more at start-up); a crop of another
        shape costs no more than its second run."""
        channels = self.manifest.preprocessing.channels
        window = tuple(
            min(int(n), m) for n, m in zip(self.manifest.inference.roi_size, WARM_UP_WINDOW, strict=True)
        )
        served = [  # a set of sequences the fallback segments (FLAIR may be required, say)
            tuple(c for c in channels if c not in lacking)
            for lacking in self.manifest.inputs.missing_sets()
            if self.manifest.network_for([c for c in channels if c not in lacking]) == "fallback"
        ]
        inputs = [(channels, window)] + (
            [(served[0], window)] if self.fallback is not None and served else []
        )
        lacking_of = norms_keys(channels, self.manifest.inputs)
        inputs += [
            (tuple(c for c in channels if c not in lacking_of[name.split("/", 1)[1]]), (32, 32, 32))
            for name in self.variants
        ]
        for present, shape in inputs:
            grid = sitk.Image(list(reversed(shape)), sitk.sitkUInt8)  # sitk sizes are (x, y, z)
            array = np.zeros((len(channels), *shape), np.float32)
            self.predict(ModelInput(array=array, grid=grid, present=present))


class ForeignPredictor(Predictor):
    """A MONAI bundle's or an nnU-Net model's network (``tumorseg.model.foreign``) in the Predictor's place:
    it gets the unnormalised volumes (the package's preprocessing says "none"; a missing optional
    sequence's channel as ``network_input`` makes it) and does its own preprocessing and tiling; masks,
    warm-up and the rest are the service's."""

    def predict(self, model_input: ModelInput) -> NDArray[np.float32]:
        probabilities = self.network.predict(self.network_input(model_input), model_input.grid)
        check_probabilities(probabilities, model_input.array.shape[1:], f"the {self.manifest.backend} model")
        return np.asarray(probabilities, dtype=np.float32)

    def network_for(self, model_input: ModelInput) -> str:
        return "main"

    def warm_up(self) -> None:
        self.network.warm_up()


def guard_fused(networks: Mapping[str, Any], manifest: ModelManifest) -> str:
    """The fast path's state after checking it: "off" where no network has a fused block; "fused" where
    each fused network gives the plain network's logits to ``FUSED_TOLERANCE`` on one small seeded input;
    else every network is made plain again in place (``unfuse``), a warning is logged, and "plain (why)"
    is returned. Costs two passes of the main and the fallback network over (s, 2s, 3s) voxels."""
    from tumorseg.model.fused import is_fused, unfuse

    fused = {name: network for name, network in networks.items() if is_fused(network)}
    if not fused:
        return "off"
    # A BatchNorm variant ("fallback/t1") is its network with other constants folded in: the same fused
    # blocks on the same shapes, so the networks it varies stand for it (the check costs half as much).
    checked = {name: network for name, network in fused.items() if "/" not in name} or fused
    args = manifest.architecture_args
    problem = _fused_disagreement(checked, int(args["in_channels"]), stride_product(args))
    if problem is None:
        return "fused"
    for network in fused.values():
        unfuse(network)
    log.warning(
        "the fused CPU path %s; the plain network runs instead (torch's private oneDNN operators)", problem
    )
    return f"plain (fused {problem} at warm-up)"


def _fused_disagreement(networks: Mapping[str, Any], channels: int, factor: int) -> str | None:
    """How the first of ``networks`` whose fused blocks disagree with their plain ones does (its output
    differs, or it fails), or None when all agree (see ``FUSED_TOLERANCE``)."""
    import torch

    from tumorseg.model.fused import unfused

    side = factor * -(-FUSED_CHECK_SIDE // factor)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((1, channels, side, 2 * side, 3 * side), generator=generator)
    noise = noise.contiguous(memory_format=torch.channels_last_3d)
    for name, network in networks.items():
        with torch.inference_mode():
            with unfused(network):
                plain = network(noise)
            try:
                fast = network(noise)
            except Exception as exc:  # a private operator this torch changed or dropped: any error
                log.warning("the fused %s network failed on its check: %r", name, exc)
                return f"network failed ({type(exc).__name__})"
        difference = float((fast - plain).abs().max())
        allowed = FUSED_TOLERANCE * max(1.0, float(plain.abs().max()))
        if not difference <= allowed:  # NaN too
            log.warning(
                "the fused %s network's logits differ by %.3g (allowed %.3g)", name, difference, allowed
            )
            return f"output differed by {difference:.3g}"
    return None


def _one_window(
    network: Any, tensor: Any, roi: tuple[int, ...], layout: Any
) -> tuple[Any, tuple[slice, ...]]:
    """``network``'s logits over ``tensor`` (1, C, I, J, K), which one window of ``roi`` covers, as MONAI's
    ``sliding_window_inference`` computes them (the input zero-padded to ``roi``, the split of each side's
    padding as its, so the network sees the same voxels at the same places) without its bookkeeping: with
    one window its Gaussian weighting divides back out, and the accumulation buffers, the weight map and
    their passes over the output cost a quarter of the prediction. The same logits to rounding (the
    weighting's multiply and divide). The input is copied once, into the padded window in ``layout`` (the
    network's memory format). Returns the window's logits (1, 3, *roi) and the index of the input in it."""
    import torch

    shape = tensor.shape[2:]
    inside = (
        slice(None),
        slice(None),
        *(slice((r - s) // 2, (r - s) // 2 + s) for r, s in zip(roi, shape, strict=True)),
    )
    padded = torch.empty(
        (*tensor.shape[:2], *roi), dtype=tensor.dtype, device=tensor.device, memory_format=layout
    )
    for axis, window in enumerate(inside[2:], start=2):  # zeros around the input: the padding alone
        for pad in (slice(0, window.start), slice(window.stop, None)):
            padded[(slice(None),) * axis + (pad,)] = 0.0
    padded[inside] = tensor
    return network(padded), inside
