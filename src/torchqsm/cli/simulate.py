"""``torchqsm simulate phantom|dataset|suite``: simulated χ, training pairs and the evaluation suite.

Register with :func:`add_simulate_parser` on the main parser's sub-commands. Each handler
loads nothing, calls the library and saves; user errors are :class:`~torchqsm.errors.TorchQSMError`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..bench.suite import build_suite, suite_cases
from ..errors import ParameterError
from ..io import save_nifti
from ..io._atomic import check_output_path, check_writable_folder, write_atomically
from ..simulate.dataset import SimulatedQSMDataset, SimulationConfig, derive_seed, simulate_volume
from ..simulate.orientation import affine_for_b0_dir

__all__ = ["add_simulate_parser", "run_phantom", "run_dataset", "run_suite"]


def add_simulate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``simulate`` with its sub-commands ``phantom``, ``dataset`` and ``suite`` to ``subparsers``."""
    simulate = subparsers.add_parser("simulate", help="simulate χ phantoms, training pairs or the evaluation suite",
                                     description="Simulate susceptibility maps, fields and GRE signals.")
    commands = simulate.add_subparsers(dest="simulate_command", required=True,
                                       parser_class=getattr(subparsers, "_parser_class", argparse.ArgumentParser))

    phantom = commands.add_parser("phantom", help="one random χ head phantom (ppm) with its local field and mask")
    phantom.add_argument("output", metavar="CHI", help="output χ NIfTI (.nii or .nii.gz)")
    phantom.add_argument("--field", metavar="FIELD", help="local field output (default CHI with _localfield)")
    phantom.add_argument("--mask", metavar="MASK", help="brain mask output (default CHI with _mask)")
    phantom.add_argument("--source", choices=("head", "shapes"), default="head", help="head model or random shapes")
    phantom.add_argument("--voxel-size", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("X", "Y", "Z"))
    phantom.add_argument("--max-tilt", type=float, default=0.0, metavar="DEG",
                         help="B0 drawn uniformly within this tilt (degrees; default 0: along voxel axis 3)")
    _common(phantom)
    phantom.set_defaults(handler=run_phantom)

    dataset = commands.add_parser("dataset", help="N training pairs (input, target, mask) as NIfTI")
    dataset.add_argument("output", metavar="OUT_DIR", help="output folder")
    dataset.add_argument("--count", type=int, required=True, metavar="N", help="number of pairs")
    dataset.add_argument("--task", choices=("local_to_chi", "total_to_local", "phase_to_chi"), default="local_to_chi")
    dataset.add_argument("--source", choices=("head", "shapes"), default="head")
    dataset.add_argument("--patch-size", type=int, nargs=3, default=(64, 64, 64), metavar=("X", "Y", "Z"))
    dataset.add_argument("--whole", action="store_true", help="whole volumes instead of patches")
    dataset.add_argument("--patches-per-volume", type=int, default=16, metavar="K")
    dataset.add_argument("--max-tilt", type=float, default=30.0, metavar="DEG", help="B0 tilt cap (degrees)")
    _common(dataset)
    dataset.set_defaults(handler=run_dataset)

    suite = commands.add_parser("suite", help="the evaluation suite: BIDS datasets with ground truth")
    suite.add_argument("output", metavar="OUT_DIR", help="output folder")
    suite.add_argument("--small", action="store_true", help="2 mm baseline: builds in seconds (for CI)")
    suite.add_argument("--case", action="append", metavar="NAME", help="build only this case (repeatable)")
    _common(suite)
    suite.set_defaults(handler=run_suite)
    return simulate


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _nifti_output(path: str, overwrite: bool) -> Path:
    out = check_output_path(path, overwrite=overwrite)
    check_writable_folder(out.parent)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise ParameterError("the output must be a .nii or .nii.gz file", source=str(out))
    return out


def _beside(path: Path, tag: str) -> Path:
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    return path.with_name(path.name[: -len(suffix)] + f"_{tag}{suffix}")


def _write_json(path: Path, payload: dict, overwrite: bool) -> None:
    text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)


def _tilt(value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 180.0):
        raise ParameterError(f"--max-tilt must lie in [0, 180] degrees, got {value}")
    return value


def run_phantom(args: argparse.Namespace) -> int:
    """``torchqsm simulate phantom``: one χ phantom, its local field and brain mask, with a JSON sidecar."""
    output = _nifti_output(args.output, args.overwrite)
    field = _nifti_output(args.field or str(_beside(output, "localfield")), args.overwrite)
    mask = _nifti_output(args.mask or str(_beside(output, "mask")), args.overwrite)
    if any(not (math.isfinite(h) and h > 0) for h in args.voxel_size):
        raise ParameterError(f"--voxel-size must be three positive numbers, got {tuple(args.voxel_size)}")
    config = SimulationConfig(task="local_to_chi", source=args.source, patch_size=None, region_size=None,
                              lesion_probability=0.0, local_noise_ppm=(0.0, 0.0),
                              voxel_size_mm=tuple(args.voxel_size), max_tilt_deg=_tilt(args.max_tilt))
    seed = derive_seed("phantom", args.seed)
    volume = simulate_volume(config, torch.Generator().manual_seed(seed))
    affine = affine_for_b0_dir(volume.b0_dir, voxel_size_mm=volume.voxel_size_mm, shape=volume.mask.shape)
    save_nifti(output, volume.chi_ppm, affine=affine, overwrite=args.overwrite)
    save_nifti(field, volume.local_field_ppm, affine=affine, overwrite=args.overwrite)
    save_nifti(mask, volume.mask, affine=affine, overwrite=args.overwrite, dtype="uint8")
    _write_json(output.with_name(output.name.split(".nii")[0] + ".json"), {
        "Units": "ppm", "Source": args.source, "Seed": args.seed, "B0Direction": list(volume.b0_dir),
        "VoxelSizeMM": list(volume.voxel_size_mm), "LocalField": str(field), "Mask": str(mask),
        "GeneratedBy": {"Name": "torchqsm", "Version": __version__}}, args.overwrite)
    if not args.quiet:
        print(f"wrote {output}, {field.name} and {mask.name}", file=sys.stderr)
    return 0


def run_dataset(args: argparse.Namespace) -> int:
    """``torchqsm simulate dataset``: ``--count`` training pairs as ``pair-NNNNN_{input,target,mask}.nii.gz`` + JSON."""
    if args.count < 1:
        raise ParameterError(f"--count must be at least 1, got {args.count}")
    if min(args.patch_size) < 1 or args.patches_per_volume < 1:
        raise ParameterError("--patch-size and --patches-per-volume must be positive")
    config = SimulationConfig(task=args.task, source=args.source, patch_size=None if args.whole else tuple(args.patch_size),
                              patches_per_volume=args.patches_per_volume, max_tilt_deg=_tilt(args.max_tilt))
    out = check_writable_folder(args.output)
    if (out / "dataset.json").exists() and not args.overwrite:
        raise ParameterError("a dataset exists in this folder; pass --overwrite to replace it", source=str(out))
    samples = itertools.islice(iter(SimulatedQSMDataset(config, seed=args.seed)), args.count)
    bar = tqdm(samples, total=args.count, desc="pairs", unit="pair", disable=True if args.quiet else None, leave=False)
    for number, sample in enumerate(bar):
        b0_dir = tuple(float(v) for v in sample["b0_dir"])
        voxel = tuple(float(v) for v in sample["voxel_size_mm"])
        affine = affine_for_b0_dir(b0_dir, voxel_size_mm=voxel, shape=sample["mask"].shape[-3:])
        stem = out / f"pair-{number:05d}"
        for key in ("input", "target", "mask", "magnitude"):
            if key in sample:
                data = sample[key][0] if sample[key].shape[0] == 1 else sample[key].movedim(0, -1)
                save_nifti(f"{stem}_{key}.nii.gz", data, affine=affine, overwrite=args.overwrite,
                           dtype="uint8" if key == "mask" else "float32")
        extra = {k: sample[k].tolist() for k in ("echo_times_s", "b0_tesla") if k in sample}
        _write_json(Path(f"{stem}.json"), {"Task": args.task, "VolumeSeed": int(sample["seed"]), "B0Direction": list(b0_dir),
                                           "VoxelSizeMM": list(voxel), **extra}, args.overwrite)
    bar.close()
    _write_json(out / "dataset.json", {"Task": args.task, "Source": args.source, "Count": args.count, "Seed": args.seed,
                                       "SeedSalt": "train", "Config": asdict(config),
                                       "GeneratedBy": {"Name": "torchqsm", "Version": __version__}}, args.overwrite)
    if not args.quiet:
        print(f"wrote {args.count} {args.task} pairs to {out}", file=sys.stderr)
    return 0


def run_suite(args: argparse.Namespace) -> int:
    """``torchqsm simulate suite``: build the evaluation suite into ``OUT_DIR``."""
    bar = None if args.quiet else tqdm(total=len(args.case) if args.case else len(suite_cases(small=args.small)), desc="suite", unit="case",
                                       disable=None, leave=False)

    def progress(case) -> None:
        if bar is not None:
            bar.set_postfix_str(case.name, refresh=False)
            bar.update(1)

    check_writable_folder(args.output)
    try:
        index = build_suite(args.output, small=args.small, seed=args.seed, cases=args.case, overwrite=args.overwrite,
                            progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        print(f"wrote the evaluation suite to {index.parent} ({index.name})", file=sys.stderr)
    return 0
