"""``torchqsm run``: raw multi-echo GRE (files or a BIDS dataset) → χ maps, through a recipe."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ..errors import InputError, ParameterError
from ..pipeline.recipes import PHASE_REFINEMENTS, RECIPES, get_recipe, with_overrides
from ..pipeline.registry import get_method
from ..pipeline.specs import parse_assignments
from ..pipeline.steps import BACKGROUND, UNWRAP
from .commands import _device

__all__ = ["add_run_parser", "run_pipeline"]

_EPILOG = """examples:
  torchqsm run BIDS_DIR OUT_DIR --participant-label 01 02 --recipe accurate
  torchqsm run --mag mag.nii.gz --phase phase.nii.gz --echo-times 0.004 0.008 0.012 --b0-tesla 3 -o OUT_DIR
  torchqsm run --list-recipes
"""


def add_run_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``run`` on the ``torchqsm`` sub-command parser."""
    run = commands.add_parser(
        "run", help="multi-echo magnitude + phase (files or BIDS) → χ (ppm): mask, unwrap, combine, "
                    "background removal, inversion, referencing",
        description="Run the QSM pipeline. BIDS-App form: torchqsm run BIDS_DIR OUT_DIR; file form: "
                    "torchqsm run --mag ... --phase ... -o OUT_DIR. A recipe gives every step's default; each "
                    "step option below overrides it.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("bids", nargs="*", metavar="BIDS_DIR OUT_DIR", help="BIDS dataset and derivatives folder")
    inputs = run.add_argument_group("file inputs")
    inputs.add_argument("--mag", nargs="+", metavar="MAG", help="magnitude NIfTI (4-D, echoes last) or one file per echo")
    inputs.add_argument("--phase", nargs="+", metavar="PHASE", help="phase NIfTI, any scaling, same layout as --mag")
    inputs.add_argument("-o", "--output-dir", metavar="OUT_DIR", help="output folder (file form)")
    inputs.add_argument("--mask", metavar="MASK", help="brain mask NIfTI replacing the masking step")
    inputs.add_argument("--reference-mask", metavar="MASK",
                        help="region (e.g. CSF) whose mean χ becomes zero; implies --reference region")
    inputs.add_argument("--echo-times", type=float, nargs="+", metavar="TE",
                        help="echo times in seconds (default: EchoTime of the JSON sidecars)")
    inputs.add_argument("--b0-tesla", type=float, metavar="T",
                        help="field strength in tesla (default: MagneticFieldStrength of the sidecars)")
    inputs.add_argument("--phase-sign", type=int, choices=(1, -1), default=1,
                        help="multiply the phase by this (-1 for scanners storing the opposite sign)")
    bids = run.add_argument_group("BIDS selection and parallel runs")
    bids.add_argument("--participant-label", nargs="+", metavar="L", help="subjects to run (with or without sub-)")
    bids.add_argument("--session", nargs="+", metavar="S", help="sessions to run (with or without ses-)")
    bids.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler (default: local)")
    bids.add_argument("--workers", type=int, metavar="N", help="local Dask worker processes (default: one per core)")
    steps = run.add_argument_group("recipe and steps")
    steps.add_argument("--recipe", default="fast", help=f"named defaults: {', '.join(RECIPES)} (default fast)")
    steps.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    steps.add_argument("--mask-method", choices=("otsu", "threshold", "quality"), help="masking method")
    steps.add_argument("--brain-extraction", type=float, metavar="MM",
                       help="cut the scalp off the magnitude mask by an opening of this radius (0: off)")
    steps.add_argument("--erode", type=int, metavar="VOXELS", help="erode the brain mask by this many voxels")
    steps.add_argument("--unwrap", choices=("laplacian", "region_growing"), help="phase unwrapping method")
    steps.add_argument("--unwrap-param", action="append", default=[], metavar="KEY=VALUE",
                       help="an unwrapping parameter (repeatable), e.g. max_iterations=20 for laplacian")
    steps.add_argument("--combine", choices=("phase_difference", "weighted_fit", "per_echo"), help="echo combination")
    steps.add_argument("--background", help=f"background removal: {', '.join(sorted(BACKGROUND))}")
    steps.add_argument("--background-param", action="append", default=[], metavar="KEY=VALUE",
                       help="a background-removal parameter (repeatable)")
    steps.add_argument("--inversion", help="dipole inversion method (see `torchqsm methods`)")
    steps.add_argument("--inversion-param", action="append", default=[], metavar="KEY=VALUE",
                       help="a dipole-inversion parameter (repeatable), e.g. max_iterations=50")
    steps.add_argument("--phase-refine", choices=PHASE_REFINEMENTS,
                       help="after a phase network (recipes iqsm, iqsm+): lot = a TV-regularised correction for "
                            "data consistency with the Laplacian of the wrapped phase, none = the network's output")
    steps.add_argument("--reference", choices=("mean", "region", "none"),
                       help="χ referencing: mask mean (default), a region's mean (--reference-mask), none")
    other = run.add_argument_group("other")
    other.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    other.add_argument("--overwrite", action="store_true", help="replace existing outputs (and rerun finished subjects)")
    other.add_argument("--no-qc", action="store_true", help="do not write the QC figure")
    other.add_argument("--report", action="store_true",
                       help="also write <stem>_Chimap_report.html per finished subject: every step's map, timings, "
                            "parameters (offline, images embedded)")
    other.add_argument("--verbose", action="store_true", help="also print the recipe and notes")
    other.add_argument("--quiet", action="store_true", help="print errors only")
    run.set_defaults(handler=run_pipeline)
    return run


def _params(specs, items: list[str], flag: str, owner: str) -> dict[str, Any]:
    return parse_assignments([spec for spec in specs if not spec.image], items, flag=flag, owner=owner)


def build_recipe(args: argparse.Namespace):
    """The recipe of ``args.recipe`` with every step option applied."""
    recipe = get_recipe(args.recipe)
    background = args.background or recipe.background
    if background not in BACKGROUND:
        raise ParameterError(f"unknown background method '{background}'; choose one of {', '.join(sorted(BACKGROUND))}")
    unwrap = args.unwrap or recipe.unwrap
    if unwrap not in UNWRAP:
        raise ParameterError(f"unknown unwrap method '{unwrap}'; choose one of {', '.join(sorted(UNWRAP))}")
    if recipe.phase_network:
        given = [flag for flag, value in (("--unwrap", args.unwrap), ("--combine", args.combine),
                                          ("--background", args.background), ("--inversion", args.inversion),
                                          ("--unwrap-param", args.unwrap_param),
                                          ("--background-param", args.background_param),
                                          ("--inversion-param", args.inversion_param)) if value]
        if given:
            raise ParameterError(f"the recipe '{recipe.name}' runs the phase network '{recipe.phase_network}' on the "
                                 f"wrapped phase: it has no step for {', '.join(given)}")
        return with_overrides(recipe, mask=args.mask_method, mask_erode_voxels=args.erode,
                              brain_extraction_mm=args.brain_extraction, phase_refine=args.phase_refine,
                              reference=args.reference or ("region" if args.reference_mask else None))
    if args.phase_refine not in (None, "none"):
        raise ParameterError(f"--phase-refine follows a phase network; the recipe '{recipe.name}' has none "
                             "(use --recipe iqsm or iqsm+)")
    inversion = get_method(args.inversion or recipe.inversion)
    if inversion.multi_orientation:
        raise ParameterError(f"'{inversion.name}' needs several head orientations and cannot run in the pipeline")
    return with_overrides(
        recipe, mask=args.mask_method, mask_erode_voxels=args.erode, brain_extraction_mm=args.brain_extraction,
        unwrap=args.unwrap, combine=args.combine, background=args.background, inversion=args.inversion,
        reference=args.reference or ("region" if args.reference_mask else None),
        background_params=_params(BACKGROUND[background].parameters, args.background_param, "--background-param",
                                  background) or None,
        inversion_params=_params(inversion.specs, args.inversion_param, "--inversion-param", inversion.name) or None,
        unwrap_params=_params(UNWRAP[unwrap].parameters, args.unwrap_param, "--unwrap-param", unwrap) or None)


def run_pipeline(args: argparse.Namespace) -> int:
    """``torchqsm run``: returns 0 when every subject finished or was skipped, 1 when any failed."""
    from ..pipeline.app import plan_bids_jobs, run_bids, run_files

    if args.list_recipes:
        for recipe in RECIPES.values():
            print(f"{recipe.name:<10} {recipe.description}")
        return 0
    recipe = build_recipe(args)
    device = str(_device(args.device))
    if args.echo_times is not None and any(not (math.isfinite(t) and t > 0) for t in args.echo_times):
        raise ParameterError(f"--echo-times must be positive seconds, got {args.echo_times}")
    if args.b0_tesla is not None and not (math.isfinite(args.b0_tesla) and args.b0_tesla > 0):
        raise ParameterError(f"--b0-tesla must be positive, got {args.b0_tesla}")
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.verbose and log is not None:
        log(f"recipe {recipe.name}: {recipe.as_dict()}")
    file_form = args.mag is not None or args.phase is not None
    if file_form:
        if args.bids:
            raise ParameterError("give either BIDS_DIR OUT_DIR or --mag/--phase/-o, not both")
        if not (args.mag and args.phase and args.output_dir):
            raise ParameterError("the file form needs --mag, --phase and -o OUT_DIR")
        if len(args.mag) != len(args.phase):
            raise InputError(f"{len(args.mag)} magnitude file(s) but {len(args.phase)} phase file(s)",
                             source=args.phase[0])
        run_files(args.mag, args.phase, args.output_dir, recipe=recipe, echo_times_s=args.echo_times,
                  b0_tesla=args.b0_tesla, mask=args.mask, reference_mask=args.reference_mask, phase_sign=args.phase_sign, device=device,
                  overwrite=args.overwrite, qc=not args.no_qc, log=log)
        _reports(args, args.output_dir)
        return 0
    if len(args.bids) != 2:
        raise ParameterError("give BIDS_DIR OUT_DIR, or --mag/--phase/-o for files")
    if args.mask or args.reference_mask:
        raise ParameterError("--mask and --reference-mask are for the file form; a BIDS run makes its own masks")
    bids_dir, out_dir = args.bids
    jobs = plan_bids_jobs(bids_dir, out_dir, recipe=recipe, participant_labels=args.participant_label,
                          sessions=args.session, echo_times_s=args.echo_times, b0_tesla=args.b0_tesla,
                          phase_sign=args.phase_sign, device=device, overwrite=args.overwrite, qc=not args.no_qc)
    outcomes = run_bids(jobs, out_dir, scheduler=args.scheduler, workers=args.workers, quiet=args.quiet, log=log)
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("finished", "skipped", "failed")}
    print(f"torchqsm run: {counts['finished']} finished, {counts['skipped']} skipped, {counts['failed']} failed",
          file=sys.stderr)
    for outcome in failed:
        print(f"torchqsm run: error: {outcome.key}: {outcome.message}", file=sys.stderr)
    _reports(args, out_dir)
    return 1 if failed else 0


def _reports(args: argparse.Namespace, out_dir: str) -> None:
    """With ``--report``: the HTML page of every finished subject under ``out_dir``."""
    if not args.report:
        return
    from ..bench.subject_report import finished_chi_maps, subject_report

    for chi in finished_chi_maps(out_dir):
        page = subject_report(chi)
        if not args.quiet:
            print(f"torchqsm run: report {page}", file=sys.stderr)
