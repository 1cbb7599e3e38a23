"""Bodies of the ``torchqsm`` sub-commands: load, call the library, save."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ParameterError
from ..inversion.regularization import choices_record, collect_choices, record_choices
from ..io import Volume, check_same_grid, load_mask, load_nifti, save_nifti, sidecar_path_for, write_sidecar
from ..io._atomic import check_output_path, check_writable_folder
from ..io.acquisition import acquisition_from_nifti
from ..metrics import METRIC_DESCRIPTIONS, score
from ..physics import normalize_b0_dir
from ..pipeline.registry import METHODS, MethodSpec, get_method, invert
from ..pipeline.specs import REQUIRED, parse_assignments
from ..validation import check_local_field_units
from .progress import progress_callback

__all__ = ["run_invert", "run_methods", "run_score"]


def _geometry(args: argparse.Namespace, field: Volume, spec: MethodSpec) -> tuple[tuple[float, ...], Any]:
    voxel = tuple(args.voxel_size) if args.voxel_size else field.voxel_size_mm
    if any(not (math.isfinite(v) and v > 0) for v in voxel):
        raise ParameterError(f"--voxel-size must be three positive numbers, got {voxel}")
    if spec.multi_orientation:
        count = field.data.shape[-1] if field.data.ndim == 4 else 1
        if not args.b0_dir or len(args.b0_dir) != 3 * count:
            raise ParameterError(f"{spec.name} needs --b0-dir with 3 numbers per orientation "
                                 f"({count} orientations: {3 * count} numbers)")
        directions = [args.b0_dir[3 * i: 3 * i + 3] for i in range(count)]
        try:
            return voxel, [normalize_b0_dir(d) for d in directions]
        except ValueError as error:
            raise ParameterError(f"--b0-dir: {error}") from None
    if args.b0_dir is None:
        return voxel, field.b0_dir
    if len(args.b0_dir) != 3:
        raise ParameterError(f"--b0-dir takes 3 numbers, got {len(args.b0_dir)}")
    try:
        return voxel, normalize_b0_dir(args.b0_dir)
    except ValueError as error:
        raise ParameterError(f"--b0-dir: {error}") from None


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ParameterError(f"--device must be cpu, cuda or cuda:N, got '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("--device cuda was asked for but no CUDA GPU is available")
    if device.type not in ("cpu", "cuda"):
        raise ParameterError(f"--device must be cpu or cuda, got '{name}'")
    return device


def run_invert(args: argparse.Namespace) -> int:
    """``torchqsm invert``: read field and mask, invert, write χ and its JSON sidecar."""
    started = time.perf_counter()
    spec = get_method(args.method)
    params = parse_assignments(spec.parameters, args.param, owner=spec.name)
    device = _device(args.device)
    output = check_output_path(args.output, overwrite=args.overwrite)
    if not (output.name.endswith(".nii") or output.name.endswith(".nii.gz")):
        raise ParameterError("the output must be a .nii or .nii.gz file", source=str(output))
    sidecar = check_output_path(sidecar_path_for(output), overwrite=args.overwrite)
    check_writable_folder(output.parent)

    field = load_nifti(args.field, role="field", ndim=(3, 4) if spec.multi_orientation else 3)
    mask = load_mask(args.mask, like=field)
    check_local_field_units(field.data, mask.data if field.data.ndim == 3 else mask.data[..., None].repeat(
        field.data.shape[-1], -1), source=args.field)
    inputs: dict[str, str] = {"field": args.field, "mask": args.mask}
    if args.magnitude:
        magnitude = load_nifti(args.magnitude, role="magnitude", ndim=3)
        check_same_grid(magnitude, mask)
        if np.any(magnitude.data < 0):
            raise InputError("the magnitude has negative values; pass a magnitude image, not phase or χ",
                             source=args.magnitude)
        params["magnitude"] = torch.from_numpy(magnitude.data)
        inputs["magnitude"] = args.magnitude
    elif spec.needs_magnitude:
        raise ParameterError(f"method '{spec.name}' needs a magnitude image: pass --magnitude MAG.nii.gz")
    voxel, b0_dir = _geometry(args, field, spec)
    acquisition = acquisition_from_nifti(field, voxel_size_mm=voxel if args.voxel_size else None,
                                         b0_dir=b0_dir if args.b0_dir else None, echo_times_s=args.echo_times,
                                         b0_tesla=args.b0_tesla, override_source="flag")
    values = spec.values(params)  # checked before the work starts (e.g. a missing image)
    needs = [n for n in values.acquisition_needs() if getattr(acquisition, n) is None]
    if needs:
        acquisition.require(*needs, method=spec.name)

    data = torch.from_numpy(field.data)
    if spec.multi_orientation:
        # Orientations first, as the library wants; a 3-D file is one orientation.
        data = data.permute(3, 0, 1, 2).contiguous() if data.ndim == 4 else data.unsqueeze(0)
    callback = None
    total = _iteration_limit(spec, params)
    if total is not None and not args.quiet:
        callback, bar = progress_callback(total=total, description=spec.name)
    chi = None
    try:
        with collect_choices() as made:
            chi = invert(data, torch.from_numpy(mask.data), spec.name, acquisition, device=device, callback=callback,
                         **params)
    finally:
        if callback is not None:
            bar.close()
    chi_np = chi.detach().cpu().numpy()
    if not np.all(np.isfinite(chi_np)):
        raise InputError(f"method '{spec.name}' produced non-finite values; check the field's units (ppm) "
                         "and the parameters", source=args.field)
    elapsed = time.perf_counter() - started
    recorded = record_choices(values.record(acquisition=acquisition, images={"magnitude": args.magnitude}), made)
    command = shlex.join(["torchqsm", *getattr(args, "argv", sys.argv[1:])])
    save_nifti(output, chi_np, like=mask, overwrite=args.overwrite)
    try:
        write_sidecar(sidecar, method=spec.name, parameters=recorded, inputs=inputs,
                      outputs={"chi": str(output.resolve()), "unit": "ppm"},
                      extra={"Acquisition": acquisition.as_dict(), "VoxelSizeMM": list(voxel),
                             "B0Direction": [list(d) for d in b0_dir] if spec.multi_orientation else list(b0_dir),
                             "Device": str(device),
                             **({"RegularizationChoice": choices_record(made)} if made else {}),
                             "ElapsedSeconds": round(elapsed, 3), "Command": command},
                      overwrite=args.overwrite)
    except BaseException:
        output.unlink(missing_ok=True)  # never leave χ without its provenance
        raise
    if not args.quiet:
        for choice in made:
            print(choice.describe(), file=sys.stderr)
        print(f"wrote {output} ({spec.name}, {elapsed:.2f} s) and {sidecar.name}", file=sys.stderr)
    return 0


def _iteration_limit(spec: MethodSpec, params: dict[str, Any]) -> int | None:
    if not spec.progress or "max_iterations" not in spec.parameters.names():
        return None
    return int(params.get("max_iterations", spec.parameter("max_iterations").default))


def _format_default(value: Any) -> str:
    if value is REQUIRED:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def run_methods(args: argparse.Namespace) -> int:
    """``torchqsm methods``: every method with its parameters, defaults and reference."""
    specs = [get_method(args.name)] if args.name else [METHODS[name] for name in sorted(METHODS)]
    if args.json:
        payload = [{
            "name": s.name, "kind": s.kind, "summary": s.summary, "multi_orientation": s.multi_orientation,
            "parameters": [{"name": p.name, "default": None if p.default is None else _format_default(p.default),
                            "type": p.type_name, "unit": p.unit, "bounds": p.bounds, "description": p.description}
                           for p in s.specs],
            "references": list(s.references), "needs": list(s.parameters.NEEDS),
        } for s in specs]
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return 0
    for s in specs:
        print(f"{s.name}  ({s.kind}{', several orientations' if s.multi_orientation else ''})")
        print(f"    {s.summary}")
        if s.parameters.NEEDS:
            words = " and ".join({"b0_tesla": "field strength", "echo_times_s": "echo times"}[n]
                                 for n in s.parameters.NEEDS)
            print(f"    needs the {words} (BIDS sidecar, or --b0-tesla / --echo-times)")
        for p in s.specs:
            unit = f" [{p.unit}]" if p.unit else ""
            print(f"    --param {p.name}={_format_default(p.default):<10} {p.type_name:<10} {p.description}{unit}")
        if s.references:
            print(f"    ref: {s.references[0]}")
        print()
    return 0


def run_score(args: argparse.Namespace) -> int:
    """``torchqsm score``: the metrics table of an estimate against a reference."""
    estimate = load_nifti(args.estimate, role="estimate", ndim=3)
    reference = load_nifti(args.reference, role="reference", ndim=3)
    check_same_grid(reference, estimate)
    mask = load_mask(args.mask, like=estimate)
    labels = None
    if args.labels:
        label_volume = load_nifti(args.labels, role="labels", ndim=3, dtype=np.float64)
        check_same_grid(label_volume, estimate)
        if not np.all(label_volume.data == np.round(label_volume.data)):
            raise InputError("labels must be integers", source=args.labels)
        labels = label_volume.data.astype(np.int64)
    inside = reference.data[mask.data]
    if inside.size and float(inside.max() - inside.min()) == 0.0:  # SSIM, PSNR and correlation need contrast
        raise InputError("the reference is constant inside the mask: HFEN, SSIM, PSNR, correlation and the "
                         "detrended NRMSE are undefined; check the reference and mask files", source=args.reference)
    try:
        result = score(estimate.data, reference.data, mask.data, labels=labels)
    except ValueError as error:
        raise InputError(str(error), source=args.reference) from None
    if args.json:
        print(json.dumps(result, indent=2, default=float))
        return 0
    print(f"{'metric':<16}{'value':>12}  description")
    for key, value in result.items():
        if key == "roi":
            continue
        print(f"{key:<16}{value:>12.4f}  {METRIC_DESCRIPTIONS.get(key, '')}")
    if "roi" in result:
        roi = result["roi"]
        print(f"\n{'label':>6}{'voxels':>9}{'estimate':>12}{'reference':>12}{'error':>10}   (ppm)")
        for row in roi["rows"]:
            print(f"{row['label']:>6}{row['voxel_count']:>9}{row['mean_estimate']:>12.4f}"
                  f"{row['mean_reference']:>12.4f}{row['difference']:>10.4f}")
        if roi.get("slope") is not None:
            print(f"slope {roi['slope']:.4f}  intercept {roi['intercept']:.4f} ppm  R² {roi['r_squared']:.4f}")
    return 0
