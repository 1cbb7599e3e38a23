"""``torchqsm train CONFIG.toml``: train a dipole-inversion network on simulated data.

The run writes ``OUT_DIR/checkpoint.pt``, ``metrics.jsonl``, ``config.json`` and, at the end,
the weights ``OUT_DIR/NAME.safetensors`` with their card ``NAME.json`` (what
``torchqsm models`` and the method registry load). ``--resume`` continues a stopped run;
resuming a finished run only (re)writes its weights, unless the configuration asks for more
``training.steps`` (only the schedule changed: steps, milestones, gamma): then the run goes on. Multi-GPU: ``torchrun
--nproc_per_node N -m torchqsm.cli.main train CONFIG.toml`` (rank 0 writes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch

from ..errors import ParameterError
from ..io._atomic import check_writable_folder
from ..models.weights import save_weights
from ..train import load_config, train
from ..train.card import stage_cards, training_card
from ..train.config import RunConfig

__all__ = ["add_train_parser", "run_train", "suite_validator"]


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` to the main parser's sub-commands."""
    parser = subparsers.add_parser("train", help="train a dipole-inversion network on simulated data (TOML config)",
                                   description="Train a network on local field → χ pairs simulated on the fly.")
    parser.add_argument("config", metavar="CONFIG.toml", help="training configuration (see torchqsm.train.config)")
    parser.add_argument("-o", "--output", metavar="OUT_DIR", help="run folder (default runs/<model name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT_DIR/checkpoint.pt (the configuration may only extend the schedule)")
    parser.add_argument("--stop-after", type=int, metavar="N", help="stop after N steps of this call (keeps the schedule)")
    parser.add_argument("--suite", metavar="SUITE_DIR", help="validate on this built evaluation suite")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override training.device")
    parser.add_argument("--overwrite", action="store_true", help="replace the weights in OUT_DIR if they exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_train)
    return parser


def suite_validator(suite_dir: str | Path, cases: tuple[str, ...]):
    """A validation callback: NRMSE (%) of the network on ``cases`` of a built evaluation suite."""
    from ..bench.evaluate import load_case  # cli sits above bench; imported here only to keep startup light
    from ..metrics import nrmse
    from ..models import is_physics
    from ..models.inference import predict, predict_consistent

    loaded = [load_case(Path(suite_dir) / case) for case in cases]

    def validate(model: torch.nn.Module, normalization, device: torch.device) -> dict[str, float]:
        scores = {}
        for case in loaded:
            if is_physics(model):  # the case's own geometry inside the network
                chi = predict_consistent(model, case.local_field_ppm, case.mask, normalization=normalization,
                                         b0_dir=case.b0_dir, voxel_size_mm=case.voxel_size_mm, device=device)
            else:
                chi = predict(model, case.local_field_ppm, case.mask, normalization=normalization, device=device,
                              b0_dir=case.b0_dir)
            scores[f"nrmse_{case.name}"] = float(nrmse(chi.cpu(), case.chi_ppm, case.mask))
        return scores

    return validate


def _last_logged_loss(log: Path) -> float | None:
    losses = [record["loss"] for record in map(json.loads, log.read_text(encoding="utf-8").splitlines())
              if "loss" in record] if log.exists() else []
    return losses[-1] if losses else None


def run_train(args: argparse.Namespace) -> int:
    config: RunConfig = load_config(args.config)
    if args.device:
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, device=args.device))
    if args.stop_after is not None and args.stop_after < 0:
        raise ParameterError(f"--stop-after must be ≥ 0, got {args.stop_after}")
    suite = args.suite or config.validation.suite_dir
    out = check_writable_folder(args.output or Path("runs") / config.model.name, what="run folder")
    validate = suite_validator(suite, config.validation.cases) if suite else None
    result = train(config, out, resume=args.resume, validate=validate, progress=not args.quiet,
                   stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if result.step < config.training.steps:
        print(f"stopped at step {result.step} of {config.training.steps}; continue with --resume")
        return 0
    metrics = {"validation": result.validation, "validation_suite": str(suite)} if result.validation else {}
    card = training_card(config, result, metrics=metrics)
    if card["training"]["final_loss"] is None:  # a finished run resumed only to write its weights
        card["training"]["final_loss"] = _last_logged_loss(out / "metrics.jsonl")
    path = save_weights(result.model, card, out, config.model.name, overwrite=args.overwrite or args.resume)
    for stage, stage_card in stage_cards(card, result.model).items():  # each stage shipped as its own network too
        stage_path = save_weights(getattr(result.model, stage), stage_card, out, stage_card["name"],
                                  overwrite=args.overwrite or args.resume)
        if not args.quiet:
            print(f"{stage} stage: weights {stage_path}")
    if not args.quiet:
        rate = f", {result.samples_per_second:.2f} samples/s" if result.losses else ""  # none if only written now
        print(f"trained {config.model.name}: {result.step} steps, {result.total_seconds:.0f} s{rate}; weights {path}")
    return 0
