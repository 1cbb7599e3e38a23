r"""The training loop: simulated patches on the fly → Adam → checkpoints, a metrics log, weights.

``train(config, out_dir)`` fits ``config.model`` on ``local_to_chi`` pairs from
:class:`~torchqsm.simulate.SimulatedQSMDataset`, in network units (:class:`Normalization`).

Determinism: the network is initialised from ``torch.manual_seed(training.seed)`` and the
data stream is a function of the seed alone (see ``simulate.dataset``), so two CPU runs with
the same configuration give the same losses. Resuming (``resume=True``) reloads the
checkpoint and skips exactly the batches already seen, so a resumed run continues the same
loss curve. The ``DataLoader`` hands out batches round robin over its workers, so worker
``w`` of ``W`` made the batches ``w, w + W, ...``; each worker skips its own share.

Scale-out: run under ``torchrun --nproc_per_node N`` and each process trains one replica
(PyTorch ``DistributedDataParallel``, NCCL on GPUs, Gloo on CPUs) on its own data stream
(seed derived from the rank); rank 0 logs, validates and writes. On CUDA, ``training.amp``
runs the forward pass under autocast (bfloat16 where supported, else float16 with a
gradient scaler).

Outputs in ``out_dir``: ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
``metrics.jsonl`` (one JSON object per logged step and per validation), ``config.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from ..errors import ParameterError
from ..models import Normalization, build_model, is_physics
from ..simulate import SimulatedQSMDataset, derive_seed
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import RunConfig, config_from_dict
from .losses import masked_losses, total_loss

__all__ = ["train", "TrainResult", "Validator"]

#: ``validate(model, normalization, device) -> {metric: value}``, called on rank 0 only.
Validator = Callable[[torch.nn.Module, Normalization, torch.device], dict[str, float]]


@dataclass(frozen=True)
class TrainResult:
    """What a run did: steps reached, loss per step (this call, this process), time and throughput.

    ``seconds`` is this call's wall time, ``total_seconds`` the run's over all resumes.
    """

    model: torch.nn.Module
    step: int
    losses: tuple[float, ...]
    seconds: float
    total_seconds: float
    samples_per_second: float
    device: str
    world_size: int
    validation: dict[str, float]
    #: Where the steps ran: this call's machine, or, for a finished run resumed only to write its
    #: weights, the machine of the run's last steps (from the checkpoint); "" if unknown.
    hardware: str = ""


class _Skipping(IterableDataset):
    """A stream that drops what each DataLoader worker already produced before a resume."""

    def __init__(self, dataset: SimulatedQSMDataset, *, batches_done: int, batch_size: int, workers: int) -> None:
        super().__init__()
        self.dataset, self.batches_done, self.batch_size, self.workers = dataset, batches_done, batch_size, workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # The first batch after a resume comes from worker 0 but continues the stream of the
        # worker that would have made batch number ``batches_done``: rotate the roles.
        role = (worker + self.batches_done) % workers
        skip = len(range(role, self.batches_done, workers)) * self.batch_size
        yield from self.dataset.stream(role, workers, skip=skip)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # simulation workers share the cores with the training process


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ParameterError("training.device is cuda but no CUDA GPU is available")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _scheduler(optimizer: torch.optim.Optimizer, config: RunConfig) -> torch.optim.lr_scheduler.MultiStepLR:
    steps = config.training.steps
    milestones = sorted({max(1, round(m * steps)) for m in config.training.milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.training.gamma)


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's configuration with the defaults of options added since it was written."""
    try:
        return config_from_dict(saved).as_dict()
    except (ParameterError, TypeError, ValueError, KeyError):
        return saved


def _longer_schedule(saved: dict[str, Any], wanted: dict[str, Any]) -> int | None:
    """The checkpoint's step count if ``wanted`` differs from ``saved`` only in its schedule: more
    ``training.steps``, and perhaps other ``milestones`` or ``gamma``."""
    old_steps, new_steps = saved["training"]["steps"], wanted["training"]["steps"]
    if new_steps <= old_steps:
        return None
    schedule = {key: saved["training"][key] for key in ("steps", "milestones", "gamma")}
    same = {**wanted, "training": {**wanted["training"], **schedule}}
    return int(old_steps) if same == saved else None


def _init_stages(model: torch.nn.Module, config: RunConfig) -> None:
    """Load ``config.model.init``'s shipped weights into the network's stages; each card must fit."""
    from ..models.weights import load_weights

    units = getattr(model, "STAGE_UNITS", {})
    scale = {"field": config.normalization.input_scale_ppm, "chi": config.normalization.output_scale_ppm}
    for stage, weights in config.model.init.items():
        loaded = load_weights(weights)
        target = model if stage == "network" else getattr(model, stage)
        wanted = ("field", "chi") if stage == "network" else units.get(stage)
        have = (loaded.normalization.input_scale_ppm, loaded.normalization.output_scale_ppm)
        if wanted is not None and any(abs(h - scale[w]) > 1e-9 * scale[w] for h, w in zip(have, wanted)):
            raise ParameterError(f"[model] init: '{weights}' has input/output scales {have} ppm; the {stage} stage "
                                 f"needs {tuple(scale[w] for w in wanted)} ([normalization] of this run)")
        try:
            target.load_state_dict(loaded.model.state_dict())
        except RuntimeError as error:
            raise ParameterError(f"[model] init: '{weights}' does not fit the {stage} stage (its hyperparameters "
                                 f"differ): {str(error).splitlines()[0]}") from None


def _train_mode(network: torch.nn.Module, model: torch.nn.Module, frozen: tuple[str, ...]) -> None:
    """Training mode, except the frozen stages: their batch-norm statistics must not move either."""
    network.train()
    for stage in frozen:
        getattr(model, stage).eval()


#: The batch entries with spatial axes, ``(N, C, X, Y, Z)``.
_VOLUMES = ("input", "target", "mask", "local", "magnitude")


def _pad_batch(batch: dict[str, Any], multiple: int) -> dict[str, Any]:
    """Zero-pad every volume of ``batch`` to a multiple of the network's, for whole heads of any size.

    A U-Net halves its input ``depth`` times, so a whole head (or a patch) whose sizes are not
    multiples of ``2**depth`` cannot pass. The padding lies outside the mask, where no loss term
    looks.
    """
    from ..models.inference import pad_to_multiple

    if multiple <= 1 or all(n % multiple == 0 for n in batch["mask"].shape[-3:]):
        return batch
    return {key: pad_to_multiple(value, multiple)[0] if key in _VOLUMES and torch.is_tensor(value) else value
            for key, value in batch.items()}


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from."""
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def train(config: RunConfig, out_dir: str | Path, *, resume: bool = False, validate: Validator | None = None,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train ``config.model`` on simulated data; checkpoints and logs go to ``out_dir``.

    Parameters
    ----------
    config
        The run (:func:`~torchqsm.train.config.load_config`).
    out_dir
        Folder for ``checkpoint.pt``, ``metrics.jsonl`` and ``config.json`` (created).
    resume
        Continue from ``out_dir/checkpoint.pt`` (same configuration) instead of starting anew. A
        configuration that differs only in its schedule (more ``training.steps``, and perhaps new
        ``milestones`` or ``gamma``) extends the run: the learning rate follows the new milestones
        (fractions of the new count) from the checkpoint's step, so it rises again if that step is
        now before a milestone. The checkpoint records each step count it was extended from.
    validate
        Called every ``validation.every`` steps and at the end (rank 0); its metrics are logged.
    progress
        Draw a progress bar (rank 0, terminals only).
    stop_after
        Stop (and checkpoint) after this many steps of this call, keeping the schedule of
        ``training.steps``: a long run in several sessions.

    Returns
    -------
    TrainResult
        The trained network (unwrapped, eval mode) and the run's figures.

    Examples
    --------
    >>> from torchqsm.train.config import config_from_dict
    >>> import tempfile
    >>> config = config_from_dict({"model": {"architecture": "unet", "hyperparameters":
    ...     {"base_channels": 2, "depth": 2}}, "training": {"steps": 2, "batch_size": 1, "workers": 0},
    ...     "data": {"source": "shapes", "shapes_volume": [24, 24, 24], "patch_size": [16, 16, 16], "pad": 8}})
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     result = train(config, folder, progress=False)
    >>> result.step, len(result.losses)
    (2, 2)
    """
    out = Path(out_dir)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(config.training.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    checkpoint_path, log_path = out / CHECKPOINT_NAME, out / "metrics.jsonl"

    settings = config.training
    torch.manual_seed(settings.seed)
    model = build_model(config.model.architecture, **config.model.hyperparameters)
    if config.model.init and not resume:
        _init_stages(model, config)
    for stage in settings.freeze:
        getattr(model, stage).requires_grad_(False)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = _scheduler(optimizer, config)
    step, previous_seconds, previous_hardware = 0, 0.0, ""
    extended_from: list[int] = []
    if resume:
        state = load_checkpoint(checkpoint_path, map_location=device)
        saved = _with_defaults(state["config"])
        longer = _longer_schedule(saved, config.as_dict())
        if saved != config.as_dict() and longer is None:
            raise ParameterError(f"{checkpoint_path}: the checkpoint was made with another configuration; resume "
                                 "with the same one (only its schedule may change: more training.steps, new "
                                 "milestones or gamma) or start a new output folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        extended_from = list(state.get("extra", {}).get("extended_from", []))
        if longer is None:
            scheduler.load_state_dict(state["scheduler"])
        else:  # the milestones move with the new step count; the learning rate follows them from here
            extended_from.append(longer)
            done = int(state["step"])
            passed = sum(1 for milestone in scheduler.milestones.elements() if milestone <= done)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * settings.gamma ** passed
            scheduler.last_epoch = done
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
            if rank == 0:
                print(f"{checkpoint_path}: extending the run from {longer} to {settings.steps} steps; the learning "
                      f"rate at step {int(state['step'])} is now {scheduler.get_last_lr()[0]:.3g}")
        torch.set_rng_state(state["rng_cpu"])
        step = int(state["step"])
        previous_seconds = float(state.get("extra", {}).get("seconds", 0.0))
        previous_hardware = str(state.get("extra", {}).get("hardware", ""))
        if rank == 0:
            _truncate_log(log_path, step)
    elif rank == 0:
        log_path.unlink(missing_ok=True)
        (out / "config.json").write_text(json.dumps(config.as_dict(), indent=2) + "\n", encoding="utf-8")

    network: torch.nn.Module = model
    if world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda"
                                                            else None)
    data_seed = settings.seed if world_size == 1 else derive_seed("rank", settings.seed, rank)
    dataset = _Skipping(SimulatedQSMDataset(config.data, seed=data_seed), batches_done=step,
                        batch_size=settings.batch_size, workers=max(settings.workers, 1))
    loader = DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.workers,
                        worker_init_fn=_worker_init if settings.workers else None,
                        persistent_workers=False, pin_memory=device.type == "cuda")

    use_amp = settings.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    normalization = config.normalization
    physics = is_physics(model)
    # The task (the architecture's, checked by config_from_dict) decides what the network is given.
    phase_input = config.data.task == "phase_to_chi"
    end_to_end = config.data.task == "total_to_chi"
    background = config.data.task == "total_to_local"
    adaptive = bool(getattr(model, "orientation_adaptive", False))
    chi_to_field = normalization.output_scale_ppm / normalization.input_scale_ppm
    last = settings.steps if stop_after is None else min(settings.steps, step + stop_after)
    bar = tqdm(total=last, initial=step, desc=f"training {config.model.name}", unit="step", dynamic_ncols=True,
               disable=None if (progress and rank == 0) else True)
    from .card import hardware_description  # card.py imports this module

    hardware = hardware_description(str(device)) + (f" × {world_size}" if world_size > 1 else "")
    losses: list[float] = []
    validation: dict[str, float] = {}
    started = time.perf_counter()
    first_step = step
    _train_mode(network, model, settings.freeze)
    batches = iter(loader)
    multiple = int(getattr(model, "multiple", 1))
    while step < last:
        batch = _pad_batch(next(batches), multiple)
        field = None if phase_input else normalization.to_network(batch["input"].to(device, non_blocking=True))
        target = normalization.chi_to_network(batch["target"].to(device, non_blocking=True))
        mask = batch["mask"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext():
            if phase_input:  # iQSM: wrapped phase (rad), echo times, field strength and B0 direction
                estimate = network(batch["input"].to(device, non_blocking=True), mask,
                                   echo_times_s=batch["echo_times_s"].to(device), b0_tesla=batch["b0_tesla"].to(device),
                                   b0_dir=batch["b0_dir"].to(device))
            elif end_to_end:  # NeXtQSM end to end: total field → local field → χ, both stages scored
                estimate, local = network(field, mask, b0_dir=batch["b0_dir"], voxel_size_mm=batch["voxel_size_mm"],
                                          chi_to_field=chi_to_field, return_local=True)
            elif background:  # NeXtQSM's background U-Net: total field and mask → local field
                estimate = network(field, mask)
            elif physics:  # the dipole operator of each sample's geometry inside the network
                estimate = network(field, mask, b0_dir=batch["b0_dir"], voxel_size_mm=batch["voxel_size_mm"],
                                   chi_to_field=chi_to_field)
            elif adaptive:  # OA-LFE (xQSM+, U-Net+OA-LFE): each sample's B0 direction edits the features
                estimate = network(field, batch["b0_dir"].to(device))
            else:
                estimate = network(field)
        terms = masked_losses(estimate, target, mask, settings.loss, b0_dir=batch["b0_dir"],
                              voxel_size_mm=batch["voxel_size_mm"], relative=settings.relative_loss,
                              demean=settings.demean_loss)
        if end_to_end and settings.loss.local > 0:  # |f̂_L - f_L| in field units (NeXtQSM's Algorithm 1)
            true_local = normalization.to_network(batch["local"].to(device, non_blocking=True))
            terms["local"] = ((local.float() - true_local) * mask).abs().sum() / mask.sum().clamp_min(1.0)
        loss = total_loss(terms, settings.loss)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if settings.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix_str(f"loss {losses[-1]:.4g}", refresh=False)
        if rank == 0 and (step % settings.log_every == 0 or step == last):
            elapsed = time.perf_counter() - started
            _append_log(log_path, {"step": step, "loss": losses[-1], **{k: float(v.detach()) for k, v in terms.items()},
                                   "learning_rate": scheduler.get_last_lr()[0], "seconds": round(elapsed, 3),
                                   "samples_per_second": (step - first_step) * settings.batch_size * world_size
                                   / max(elapsed, 1e-9)})
        if validate is not None and rank == 0 and (step % config.validation.every == 0 or step == last):
            model.eval()
            validation = {k: float(v) for k, v in validate(model, normalization, device).items()}
            _train_mode(network, model, settings.freeze)
            _append_log(log_path, {"step": step, "validation": validation})
        if rank == 0 and (step % settings.checkpoint_every == 0 or step == last):
            save_checkpoint(checkpoint_path, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                            config=config.as_dict(), extra={"host": platform.node(), "world_size": world_size,
                                   "seconds": previous_seconds + time.perf_counter() - started,
                                   "hardware": hardware,
                                   "extended_from": extended_from})
    bar.close()
    seconds = time.perf_counter() - started
    if world_size > 1:
        dist.barrier()
    model.eval()
    return TrainResult(model=model, step=step, losses=tuple(losses), seconds=seconds,
                       hardware=hardware if losses else previous_hardware,
                       total_seconds=previous_seconds + seconds,
                       samples_per_second=(step - first_step) * settings.batch_size * world_size / max(seconds, 1e-9),
                       device=str(device), world_size=world_size, validation=validation)
