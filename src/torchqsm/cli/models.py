"""``torchqsm models [NAME] [--json]``: the shipped learned models, or one model's card.

Register with :func:`add_models_parser` on the main parser's sub-commands. Nothing is
downloaded: the command reads the cards in ``torchqsm/models/weights/``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..models.weights import list_models, model_card

__all__ = ["add_models_parser", "run_models", "headline_metric"]

#: Metrics shown in the table, in order of preference (the first the card has).
_HEADLINE = ("nrmse", "dnrmse", "ssim", "hfen", "xsim", "psnr", "cc")


def add_models_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``models`` to the main parser's ``subparsers``."""
    models = subparsers.add_parser("models", help="list the shipped learned models, or show one model's card",
                                   description="List the learned models shipped with torchqsm (weights and "
                                               "cards on disk; nothing is downloaded), or print one card.")
    models.add_argument("name", nargs="?", metavar="NAME",
                        help="show this model's whole card (a shipped name or a .json/.safetensors path)")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(handler=run_models)
    return models


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"suite": {"nrmse": 0.3}}`` → ``{"suite.nrmse": 0.3}`` (numbers only)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def headline_metric(card: dict[str, Any]) -> tuple[str, float] | None:
    """The metric a table shows for ``card``: ``metrics["headline"]`` if it names one, else NRMSE, SSIM, ...

    >>> headline_metric({"metrics": {"suite": {"ssim": 0.9, "nrmse": 0.31}}})
    ('suite.nrmse', 0.31)
    >>> headline_metric({"metrics": {}}) is None
    True
    """
    metrics = card.get("metrics") or {}
    flat = _flatten(metrics) if isinstance(metrics, dict) else {}
    chosen = metrics.get("headline") if isinstance(metrics, dict) else None
    if isinstance(chosen, str) and chosen in flat:
        return chosen, flat[chosen]
    for name in _HEADLINE:
        for key, value in flat.items():
            if key.rsplit(".", 1)[-1].lower() == name:
                return key, value
    return next(iter(flat.items()), None)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _row(card: dict[str, Any]) -> list[str]:
    training = card.get("training") or {}
    voxel = "×".join(f"{v:g}" for v in card.get("voxel_size_mm", [])) or "?"
    steps = training.get("steps")
    summary = f"{steps if steps is not None else '?'} steps, {_duration(training.get('time_s'))}, " \
              f"{training.get('hardware', '?')}"
    metric = headline_metric(card)
    return [card["name"], card.get("architecture", "?"), f"{card.get('parameters', 0):,}", voxel, summary,
            f"{metric[0]} {metric[1]:.4g}" if metric else "-"]


def _print_card(value: Any, indent: int = 0) -> None:
    """Nested keys indented, lists on one line."""
    for key in sorted(value):
        item = value[key]
        if isinstance(item, dict) and item:
            print(f"{' ' * indent}{key}:")
            _print_card(item, indent + 2)
        else:
            text = json.dumps(item, ensure_ascii=False) if isinstance(item, (list, dict, bool)) or item is None \
                else str(item)
            print(f"{' ' * indent}{key}: {text}")


def run_models(args: argparse.Namespace) -> int:
    """``torchqsm models``: a table of the shipped models, or one card in full."""
    if args.name:
        card = model_card(args.name)
        if args.json:
            print(json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False))
        else:
            _print_card(card)
        return 0
    cards = list_models()
    if args.json:
        print(json.dumps(cards, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    if not cards:
        print("no learned models are shipped yet")
        return 0
    header = ["name", "architecture", "parameters", "voxel (mm)", "training", "metric"]
    rows = [header] + [_row(card) for card in cards]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
