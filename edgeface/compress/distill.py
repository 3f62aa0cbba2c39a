"""Label-free knowledge distillation: recover a compressed student from its full-precision teacher.

Pruning and quantization damage a face model in one way that matters: the geometry of its embeddings, and
so the verification decisions made by thresholding cosine scores. Both losses here need only unlabeled face
images (the compression split), because the teacher supplies every target.

Public API (the quantization engineer's QAT calls `distill` with a fake-quant student):

    cosine_kd_loss(student_emb, teacher_emb) -> Tensor
        QuantFace-style: mean(1 - cos(s_i, t_i)) on L2-normalised embeddings of the same images.

    ekd_loss(student_emb, teacher_emb, fars=(1e-2, 1e-3), temperature=0.02, structure_weight=1.0) -> Tensor
        Ef-QuantFace-style evaluation-oriented KD, label-free. Inputs are (2N, D): rows i and N+i are two
        views of image i (a positive pair); rows of different images are negative pairs. See `ekd_loss`.

    distill(student, teacher, images, spec, loss="cosine"|"ekd"|"cosine+ekd", epochs=1, lr=5e-4,
            batch_size=64, max_steps=None, progress=True, num_workers=0, seed=0, freeze_bn=False,
            weight_decay=0.0, max_seconds=None) -> dict
        Trains `student` in place (teacher frozen, eval mode, requires_grad off) on augmented views of
        `images`, leaves it in eval mode and returns {"loss", "steps", "epochs", "final_loss",
        "mean_loss_last", "wall_s", "world_size"}. Under torchrun
        (torch.distributed initialised) the student is wrapped in DistributedDataParallel, images are
        sharded with DistributedSampler and only rank 0 shows progress; all ranks end with equal weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec

LOSSES = ("cosine", "ekd", "cosine+ekd")


def cosine_kd_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """1 - cosine similarity between student and teacher embeddings of the same inputs, batch mean.

    Only the direction matters for cosine verification, so the embedding norm is left free.
    """
    s = F.normalize(student_emb.float(), dim=1)
    t = F.normalize(teacher_emb.float().detach(), dim=1)
    return (1.0 - (s * t).sum(dim=1)).mean()


def _soft_hinge(x: Tensor, temperature: float) -> Tensor:
    """A smooth relu(x): T * softplus(x / T); ~0 well below 0, ~x above, so gradients exist near the edge."""
    return temperature * F.softplus(x / temperature)


def ekd_loss(
    student_emb: Tensor,
    teacher_emb: Tensor,
    fars: Sequence[float] = (1e-2, 1e-3),
    temperature: float = 0.02,
    structure_weight: float = 1.0,
) -> Tensor:
    """Evaluation-oriented KD (after Ef-QuantFace), without labels or a classification head.

    Verification is judged at operating points: thresholds set at a target false-accept rate (FAR). A
    student may match the teacher's embeddings "on average" and still move the few scores that sit next to
    those thresholds, which is exactly what TAR@FAR measures. So, per batch:

    * Pairs. Rows i and N+i are two augmented views of image i: a genuine (positive) pair. Every pair of
      rows from different images is an impostor (negative) pair; in an identity-sparse set like the LFW
      compression split they are different people almost always, and the teacher's scores are the
      reference either way, so a rare same-person pair only costs a little slack.
    * Thresholds. For each FAR f, tau_f is the (1 - f) quantile of the TEACHER's negative scores: the
      teacher's own operating point on this batch (no gradient).
    * Decisions relative to the teacher. A positive must not score below min(tau_f, t_pos): if the
      teacher accepts, the student must accept; if the teacher rejects, the student must not be worse. A
      negative must not score above max(tau_f, t_neg): if the teacher rejects, the student must reject;
      if the teacher falsely accepts, the student must not be more confident. Violations are penalised with
      a soft hinge (temperature `temperature`, in cosine units). The positive term is a mean over
      positives; the negative term is normalised by the number of false accepts the FAR allows
      (f * #negatives), i.e. it is measured per allowed error, so rare threshold crossings are not drowned
      by thousands of easy negatives.
    * Structure. Plus `structure_weight` * mean squared difference between the student's and the teacher's
      pairwise cosine matrices (all pairs), which keeps the whole score distribution, not just the tails,
      where the teacher has it, and gives a useful gradient when no pair is near a threshold.

    Returns a scalar; differentiable with respect to `student_emb` only.
    """
    if student_emb.shape != teacher_emb.shape or student_emb.dim() != 2:
        raise ValueError(
            f"embeddings must have equal (2N, D) shapes, got {student_emb.shape} / {teacher_emb.shape}"
        )
    rows = student_emb.shape[0]
    if rows % 2 or rows < 4:
        raise ValueError("ekd_loss needs two views of at least two images: (2N, D) with N >= 2")
    n = rows // 2
    s = F.normalize(student_emb.float(), dim=1)
    t = F.normalize(teacher_emb.float().detach(), dim=1)
    sim_s = s @ s.T
    sim_t = t @ t.T

    image = torch.arange(rows, device=s.device) % n
    same_image = image[:, None] == image[None, :]
    upper = torch.ones(rows, rows, dtype=torch.bool, device=s.device).triu(1)
    neg_mask = upper & ~same_image
    idx = torch.arange(n, device=s.device)
    pos_s, pos_t = sim_s[idx, idx + n], sim_t[idx, idx + n]
    neg_s, neg_t = sim_s[neg_mask], sim_t[neg_mask]

    decision = s.new_zeros(())
    for far in fars:
        tau = torch.quantile(neg_t, 1.0 - far)
        pos_floor = torch.minimum(pos_t, tau)
        neg_ceiling = torch.maximum(neg_t, tau)
        pos_term = _soft_hinge(pos_floor - pos_s, temperature).mean()
        allowed = max(1.0, far * neg_s.numel())
        neg_term = _soft_hinge(neg_s - neg_ceiling, temperature).sum() / allowed
        decision = decision + pos_term + neg_term
    decision = decision / max(1, len(fars))
    structure = (sim_s[upper] - sim_t[upper]).pow(2).mean()
    return decision + structure_weight * structure


def _loss_fn(kind: str):
    if kind not in LOSSES:
        raise EdgefaceError(f"unknown distillation loss '{kind}'; choose one of {', '.join(LOSSES)}")
    if kind == "cosine":
        return cosine_kd_loss
    if kind == "ekd":
        return ekd_loss
    return lambda s, t: cosine_kd_loss(s, t) + ekd_loss(s, t)


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    images: Sequence[Path],
    spec: ModelSpec,
    loss: str = "cosine",
    epochs: int = 1,
    lr: float = 5e-4,
    batch_size: int = 64,
    max_steps: int | None = None,
    progress: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    freeze_bn: bool = False,
    weight_decay: float = 0.0,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Fine-tune `student` in place to reproduce `teacher` on unlabeled faces.

    Each step draws a batch, makes random views (mirror + few-pixel shift, in torch on the normalised
    batch) and runs both networks on them. The cosine loss uses one view per image; EKD needs two views per
    image (its positive pairs), so it doubles the forward batch. AdamW with a cosine-decayed learning rate
    over the planned number of steps: the student starts close to the teacher, so a short, decaying schedule
    recovers it without wandering off. `max_seconds` is a wall-clock budget: the schedule follows whichever
    of steps or time runs out first, so a time-boxed run still ends at a low learning rate. `freeze_bn`
    keeps BatchNorm statistics fixed (QAT usually wants that once observers are calibrated). A
    `KeyboardInterrupt` propagates; callers write outputs only on success, atomically.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from tqdm.auto import tqdm

    from edgeface.compress.data import augment, face_loader

    fn = _loss_fn(loss)
    if epochs < 1:
        raise EdgefaceError(f"epochs must be >= 1, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise EdgefaceError(f"max_steps must be >= 1, got {max_steps}")
    if lr <= 0:
        raise EdgefaceError(f"learning rate must be > 0, got {lr}")
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if loss != "cosine" and batch_size < 2:
        raise EdgefaceError("EKD needs at least 2 images per batch (its negatives are the other images)")

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    loader = face_loader(images, spec, batch_size=batch_size, num_workers=num_workers, seed=seed)
    per_epoch = len(loader)
    planned = per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)
    if planned < 1:
        raise EdgefaceError("no training steps: too few images for one batch")

    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    if freeze_bn:
        _freeze_bn(student)
    model: nn.Module = DistributedDataParallel(student) if distributed else student
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    bar = tqdm(total=planned, desc=f"distill ({loss})", unit="step", disable=not progress or rank != 0)
    start, step, last, recent = time.perf_counter(), 0, float("nan"), []
    step_budget_hit = False
    sampler = getattr(loader, "sampler", None)
    try:
        for epoch in range(epochs):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            for x in loader:
                done = max(
                    step / planned, (time.perf_counter() - start) / max_seconds if max_seconds else 0.0
                )
                if distributed:  # every rank must take the same number of steps, so rank 0 decides
                    flag = torch.tensor([done])
                    dist.broadcast(flag, 0)
                    done = float(flag)
                if done >= 1.0:
                    step_budget_hit = True
                    break
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * done))
                views = augment(x, gen) if loss == "cosine" else torch.cat([augment(x, gen), augment(x, gen)])
                with torch.no_grad():
                    t = teacher(views)
                s = model(views)
                value = fn(s, t)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                step += 1
                last = float(value.detach())
                recent = (recent + [last])[-20:]
                bar.update(1)
                bar.set_postfix(loss=f"{last:.4f}")
            if step_budget_hit:
                break
    finally:
        bar.close()
        student.eval()
    mean_last = sum(recent) / len(recent) if recent else float("nan")
    if distributed:
        # DDP syncs BatchNorm statistics from rank 0 at the start of each forward, so after the last step
        # every rank holds its own; take rank 0's, as the next forward would have, so all ranks agree.
        for buf in student.buffers():
            dist.broadcast(buf.data, 0)
        # report the mean over ranks, the number every rank agrees on
        buf = torch.tensor([last, mean_last], dtype=torch.float64)
        dist.all_reduce(buf)
        last, mean_last = (buf / world).tolist()
    return {
        "loss": loss,
        "steps": step,
        "epochs": epochs,
        "final_loss": last,
        "mean_loss_last": mean_last,
        "wall_s": round(time.perf_counter() - start, 2),
        "world_size": world,
    }
