"""A pruning recipe run: prune in steps, recover by distillation after each, and survive interruption.

A recipe that fits a small CPU is a long job (an hour or more), so it must be able to stop and continue:
after every pruning step the pruned structure and weights are saved to `resume_dir/prune.pt` (an edgeface
prune record plus state_dict: data, loadable with weights_only=True), and the fine-tune saves its own state
to `resume_dir/distill.pt` every few minutes and on Ctrl-C (`edgeface.compress.distill`). Running the same
command again finds them, checks that every setting is the same, and continues: the finished steps are not
redone and the fine-tune resumes at the batch, learning rate and random state where it stopped. The
caller removes `resume_dir` once its output is written.

Public API:
    Finetune(...)                                   distillation settings of the recovery phase
    run_prune(net, teacher, spec, images, ...) -> (PruneResult, [fine-tune stats per step])
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec

STATE = "prune.pt"
DISTILL_STATE = "distill.pt"


@dataclass(frozen=True)
class Finetune:
    epochs: int
    loss: str = "cosine"
    lr: float = 5e-4
    batch_size: int = 64
    max_steps: int | None = None  # over all pruning steps
    max_minutes: float | None = None  # over all pruning steps
    seed: int = 0
    augmentation: str = "basic"
    schedule: str = "cosine"
    warmup: float = 0.0
    freeze_bn: bool = False
    val_every: int = 50
    val_images: int = 128


def _save(path: Path, payload: dict[str, Any]) -> None:
    from edgeface.io import atomic_write

    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _load_state(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("settings") != settings:
        raise EdgefaceError(
            f"{path.parent} holds an unfinished run with other settings; rerun that exact command to "
            "finish it, or delete the folder to start over"
        )
    done, steps = state.get("done"), settings.get("steps")
    ratio = state.get("ratio")
    if (
        not isinstance(done, int)
        or isinstance(done, bool)
        or not isinstance(steps, int)
        or not 1 <= done <= steps
        or not isinstance(ratio, float)
        or not 0.0 < ratio < 1.0
        or not isinstance(state.get("state_dict"), dict)
        or not isinstance(state.get("layers"), dict)
    ):
        raise EdgefaceError(f"{path}: corrupt resume state; delete {path.parent} to start over")
    return state


def run_prune(
    net: nn.Module,
    teacher: nn.Module,
    spec: ModelSpec,
    images: Sequence[Path] | None,
    ratio: float | Callable[[], float],
    settings: dict[str, Any],
    finetune: Finetune | None = None,
    resume_dir: Path | None = None,
    rank: int = 0,
    progress: bool = True,
    **prune_kwargs: Any,
) -> tuple[Any, list[dict[str, Any]]]:
    """Prune `net` in place (see `prune_model` for `prune_kwargs`) and fine-tune after every step.

    `ratio` may be a callable (a budget search) that runs only when no saved state gives the ratio.
    `settings`: everything that defines the run (command options, weights), compared on resume.
    """
    from edgeface.compress.distill import distill
    from edgeface.compress.prune import count_macs_params, layer_shapes, prune_model, rebuild

    steps = int(prune_kwargs.pop("steps", 1))
    settings = {**settings, "steps": steps}
    state_file = resume_dir / STATE if resume_dir is not None else None
    distill_file = resume_dir / DISTILL_STATE if resume_dir is not None else None
    records: list[dict[str, Any]] = []
    start, finetuned, reference = 0, True, None
    if state_file is not None and state_file.is_file():
        state = _load_state(state_file, settings)
        rebuild(net, {"layers": state["layers"]}, state["state_dict"])
        net.load_state_dict(state["state_dict"])
        start, finetuned, r = state["done"], bool(state.get("finetuned")), state["ratio"]
        reference = tuple(int(v) for v in state["reference"])
        records = [f for f in state.get("finetune", []) if isinstance(f, dict)]
        ratio = r
    if callable(ratio):
        ratio = float(ratio())
    reference = reference or count_macs_params(net, spec)

    def checkpoint(done: int, is_finetuned: bool) -> None:
        if state_file is None or rank != 0:
            return
        state_file.parent.mkdir(parents=True, exist_ok=True)
        _save(
            state_file,
            {
                "settings": settings,
                "ratio": float(ratio),
                "done": done,
                "finetuned": is_finetuned,
                "reference": list(reference),
                "finetune": records,
                "layers": layer_shapes(net),
                "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            },
        )

    def recover(k: int, student: nn.Module) -> None:
        """Fine-tune after pruning step k (0-based): its share of the step and time budgets."""
        assert finetune is not None and images
        from edgeface.compress.data import _world, epoch_batches

        r, world = _world()
        total = len(epoch_batches(len(images), finetune.batch_size, 0, finetune.seed, r, world))
        total *= finetune.epochs
        if finetune.max_steps is not None:
            total = min(total, finetune.max_steps)
        per_step = max(1, total // steps)  # the epochs and step cap are over the whole run
        val = list(images[:: max(1, len(images) // finetune.val_images)][: finetune.val_images])
        stats = distill(
            student,
            teacher,
            images,
            spec,
            loss=finetune.loss,
            epochs=finetune.epochs,
            lr=finetune.lr,
            batch_size=finetune.batch_size,
            max_steps=per_step,
            seed=finetune.seed + k,
            max_seconds=finetune.max_minutes * 60 / steps if finetune.max_minutes else None,
            freeze_bn=finetune.freeze_bn,
            augmentation=finetune.augmentation,
            schedule=finetune.schedule,
            warmup=finetune.warmup,
            val_images=val,
            val_every=finetune.val_every,
            state_file=distill_file,
            progress=progress and rank == 0,
        )
        records.append({"after_step": k + 1, **stats})
        checkpoint(k + 1, True)
        if distill_file is not None and rank == 0:
            distill_file.unlink(missing_ok=True)

    after_step = None
    if finetune is not None and finetune.epochs > 0 and images:

        def after_step(k: int, student: nn.Module) -> None:
            checkpoint(k + 1, False)
            recover(k, student)

        if not finetuned:  # interrupted during the fine-tune of the last saved step: finish it first
            recover(start - 1, net)
    elif state_file is not None:

        def after_step(k: int, student: nn.Module) -> None:
            checkpoint(k + 1, True)

    result = prune_model(
        net,
        spec,
        float(ratio),
        steps=steps,
        start_step=start,
        reference=reference,
        after_step=after_step,
        progress=progress and rank == 0,
        grad_images=images,
        teacher=teacher,
        **prune_kwargs,
    )
    result.record["finetune"] = records
    result.record["finetune_settings"] = asdict(finetune) if finetune is not None else None
    return result, records


def clear(resume_dir: Path | None) -> None:
    """Forget the saved state once the run's output is safely written."""
    if resume_dir is not None and resume_dir.is_dir():
        shutil.rmtree(resume_dir, ignore_errors=True)
