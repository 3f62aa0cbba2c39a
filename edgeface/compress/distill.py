"""Label-free knowledge distillation: recover a compressed student from its full-precision teacher.

Pruning and quantization damage a face model in one way that matters: the geometry of its embeddings, and
so the verification decisions made by thresholding cosine scores. Both losses here need only unlabeled face
images (the compression split), because the teacher supplies every target.

Public API (the quantization engineer's QAT calls `distill` with a fake-quant student):

    cosine_kd_loss(student_emb, teacher_emb) -> Tensor
        QuantFace-style: mean(1 - cos(s_i, t_i)) on L2-normalised embeddings of the same images.

    relation_kd_loss(student_emb, teacher_emb) -> Tensor
        Similarity-matrix KD: the student's pairwise cosine scores over the batch against the teacher's.

    ekd_loss(student_emb, teacher_emb, fars=(1e-2, 1e-3), temperature=0.02, structure_weight=1.0) -> Tensor
        Ef-QuantFace-style evaluation-oriented KD, label-free. Inputs are (2N, D): rows i and N+i are two
        views of image i (a positive pair); rows of different images are negative pairs. See `ekd_loss`.

    LOSSES: name -> Loss: "cosine", "relation", "cosine+relation", "ekd", "cosine+ekd"

    distill(student, teacher, images, spec, loss=..., epochs=1, lr=5e-4, batch_size=64, max_steps=None,
            progress=True, num_workers=0, seed=0, freeze_bn=False, weight_decay=0.0, max_seconds=None,
            augmentation="basic", schedule="cosine", warmup=0.0, val_images=None, val_every=50,
            state_file=None, save_every_s=300) -> dict
        Trains `student` in place (teacher frozen, eval mode, requires_grad off) on augmented views of
        `images`, leaves it in eval mode and returns {"loss", "steps", "epochs", "final_loss",
        "mean_loss_last", "wall_s", "train_s", "world_size", "val", ...}. Resumable through `state_file`.
        Under torchrun (torch.distributed initialised) the student is wrapped in DistributedDataParallel,
        images are sharded by rank and only rank 0 shows progress; all ranks end with equal weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec


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


def relation_kd_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Relation (similarity-matrix) KD: every pair of images in the batch should score as the teacher scores
    it.

    Verification only ever looks at cosine scores between two faces, so this asks for exactly that and
    nothing more: the student may rotate the whole embedding space freely (cosine KD may not), which leaves
    a pruned network its capacity for what is measured. Squared differences of the two cosine matrices,
    summed over each image's partners and averaged over images, so its gradient per image has the size of
    cosine KD's and the two can be added with weight 1.
    """
    if student_emb.shape != teacher_emb.shape or student_emb.dim() != 2 or student_emb.shape[0] < 2:
        raise ValueError(f"embeddings must have equal (N >= 2, D) shapes, got {student_emb.shape}")
    s = F.normalize(student_emb.float(), dim=1)
    t = F.normalize(teacher_emb.float().detach(), dim=1)
    n = s.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    return (s @ s.T - t @ t.T)[off].pow(2).sum() / n


@dataclass(frozen=True)
class Loss:
    fn: Callable[[Tensor, Tensor], Tensor]
    two_views: bool  # EKD's positives are two views of one image: the batch is doubled


LOSSES: dict[str, Loss] = {
    "cosine": Loss(cosine_kd_loss, False),
    "relation": Loss(relation_kd_loss, False),
    "cosine+relation": Loss(lambda s, t: cosine_kd_loss(s, t) + relation_kd_loss(s, t), False),
    "ekd": Loss(ekd_loss, True),
    "cosine+ekd": Loss(lambda s, t: cosine_kd_loss(s, t) + ekd_loss(s, t), True),
}
SCHEDULES = ("cosine", "linear", "constant")


def _loss(kind: str) -> Loss:
    if kind not in LOSSES:
        raise EdgefaceError(f"unknown distillation loss '{kind}'; choose one of {', '.join(LOSSES)}")
    return LOSSES[kind]


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _lr_factor(schedule: str, done: float, warmup: float) -> float:
    """Learning-rate multiplier at fraction `done` of the budget (steps or time, whichever runs out first)."""
    if warmup > 0 and done < warmup:
        return max(done / warmup, 0.02)
    x = (done - warmup) / max(1e-9, 1.0 - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - x)
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, x)))


class ValidationCosine:
    """Mean cosine between student and teacher embeddings of fixed faces (no augmentation): a cheap view of
    how far the student still is from its target, shown every N steps. The teacher's side is computed once.
    """

    def __init__(self, teacher: nn.Module, images: Sequence[Path], spec: ModelSpec, batch_size: int = 64):
        from edgeface.compress.data import FaceImages

        data = FaceImages(images, spec)
        self.x = torch.stack([data[i] for i in range(len(data))])
        self.batch_size = batch_size
        self.t = self._embed(teacher)

    @torch.no_grad()
    def _embed(self, model: nn.Module) -> Tensor:
        was = model.training
        model.eval()
        step = self.batch_size
        out = torch.cat([model(self.x[i : i + step]) for i in range(0, len(self.x), step)])
        model.train(was)
        return F.normalize(out.float(), dim=1)

    def __call__(self, student: nn.Module) -> tuple[float, float]:
        """(mean cosine to the teacher, RMS difference of the two pairwise-score matrices). The second is
        what verification sees and the one relation KD optimises (it may rotate away from the teacher)."""
        s = self._embed(student)
        off = ~torch.eye(len(s), dtype=torch.bool)
        rms = float((s @ s.T - self.t @ self.t.T)[off].pow(2).mean().sqrt())
        return float((s * self.t).sum(1).mean()), rms


TEACHER_RUNTIMES = ("auto", "torch")  # auto: ONNX Runtime when it reproduces torch, else torch


class FrozenTeacher:
    """The teacher's forward, through ONNX Runtime when it reproduces torch, else torch.

    The teacher never trains, yet its forward is part of every distillation step; ONNX Runtime runs an
    inference-only graph (BatchNorm folded, fused kernels) that is cheaper than eager PyTorch on a CPU. The
    exported graph is used only if its outputs on the first batch match torch's to 1e-4 (relative), so
    training sees the same targets either way; when export or that check fails the teacher stays in torch,
    and `distill` reports which runtime ran it ("teacher_runtime").
    """

    def __init__(self, teacher: nn.Module, runtime: str = "auto") -> None:
        if runtime not in TEACHER_RUNTIMES:
            raise EdgefaceError(f"unknown teacher runtime '{runtime}'; choose one of {TEACHER_RUNTIMES}")
        self.teacher = teacher
        self.session: Any = None
        self.runtime = "torch"
        self._want = runtime
        self._checked = runtime != "auto"

    def _try_export(self, x: Tensor) -> None:
        import io
        import warnings

        try:
            import onnxruntime as ort

            buf = io.BytesIO()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    self.teacher, (x[:1],), buf, dynamo=False, input_names=["x"], output_names=["y"],
                    dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                )  # fmt: skip
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.log_severity_level = 3
            session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
            ref = self.teacher(x)
            if got.shape == ref.shape and torch.allclose(
                got, ref.float(), rtol=1e-4, atol=1e-4 * ref.abs().max()
            ):
                self.session, self.runtime = session, "onnxruntime"
        except Exception:  # noqa: BLE001 - any exporter/runtime limitation: keep torch
            self.session = None

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        if not self._checked:
            self._checked = True
            self._try_export(x.contiguous())
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {"x": x.contiguous().numpy()})[0])
        return self.teacher(x)


def _check_state(state: Any, config: dict[str, Any], path: Path) -> dict[str, Any]:
    """A resume file is data: its settings must be this run's and its counters sane numbers."""
    if not isinstance(state, dict) or state.get("config") != config:
        raise EdgefaceError(
            f"{path} was written by a run with other settings; delete it to start over "
            f"(saved: {state.get('config') if isinstance(state, dict) else None}, now: {config})"
        )
    for key in ("step", "epoch", "batch"):
        v = state.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise EdgefaceError(f"{path}: corrupt resume state ({key}={v!r})")
    elapsed = state.get("elapsed_s")
    if not isinstance(elapsed, float) or not math.isfinite(elapsed) or elapsed < 0:
        raise EdgefaceError(f"{path}: corrupt resume state (elapsed_s={elapsed!r})")
    return state


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
    augmentation: str = "basic",
    schedule: str = "cosine",
    warmup: float = 0.0,
    val_images: Sequence[Path] | None = None,
    val_every: int = 50,
    state_file: str | os.PathLike[str] | None = None,
    save_every_s: float = 300.0,
    teacher_runtime: str = "auto",
) -> dict[str, Any]:
    """Fine-tune `student` in place to reproduce `teacher` on unlabeled faces.

    Each step draws a batch, makes random views (`augmentation`: see `edgeface.compress.data.Augmenter`)
    and runs both networks on them; EKD needs two views per image (its positive pairs), so it doubles the
    forward batch. AdamW; the learning rate follows `schedule` (cosine, linear or constant after an optional
    linear `warmup` fraction) over the planned steps: the student starts close to the teacher, so a short,
    decaying schedule recovers it without wandering off. `max_seconds` is a wall-clock budget: the schedule
    follows whichever of steps or time runs out first, so a time-boxed run still ends at a low learning
    rate. `freeze_bn` keeps BatchNorm statistics fixed (QAT wants that once observers are calibrated; it is
    also ~20 % cheaper per step on CPU). The frozen teacher runs through ONNX Runtime when that reproduces
    its outputs (`FrozenTeacher`; `teacher_runtime="torch"` keeps PyTorch).

    `val_images`: every `val_every` steps the mean cosine to the teacher on them (no augmentation) is shown
    beside the loss and kept in the result's "val" history. `state_file`: every `save_every_s` seconds and
    at the end, the student, optimiser, data position, random generators and elapsed time are written there
    atomically; a run started with an existing `state_file` and the same settings continues where that one
    stopped (same batches, same learning-rate schedule, the time budget counting the earlier sessions). The
    caller deletes it once its own output is safely written. A `KeyboardInterrupt` propagates; callers write
    outputs only on success, atomically.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from tqdm.auto import tqdm

    from edgeface.compress.data import Augmenter, batch_loader, epoch_batches

    objective = _loss(loss)
    if epochs < 1:
        raise EdgefaceError(f"epochs must be >= 1, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise EdgefaceError(f"max_steps must be >= 1, got {max_steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise EdgefaceError(f"learning rate must be > 0, got {lr}")
    if schedule not in SCHEDULES:
        raise EdgefaceError(f"unknown learning-rate schedule '{schedule}'; choose one of {SCHEDULES}")
    if not 0.0 <= warmup < 1.0:
        raise EdgefaceError(f"warmup must be a fraction in [0, 1), got {warmup}")
    if val_every < 1:
        raise EdgefaceError(f"val_every must be >= 1, got {val_every}")
    augmenter = Augmenter(spec, augmentation)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if loss != "cosine" and batch_size < 2:
        raise EdgefaceError(f"--loss {loss} needs at least 2 images per batch (it compares images)")

    per_epoch = len(epoch_batches(len(images), batch_size, 0, seed, rank, world))
    planned = per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)
    if planned < 1:
        raise EdgefaceError("no training steps: too few images for one batch")

    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    frozen = FrozenTeacher(teacher, teacher_runtime)
    student.train()
    if freeze_bn:
        _freeze_bn(student)
    model: nn.Module = DistributedDataParallel(student) if distributed else student
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    config = {
        "loss": loss,
        "lr": lr,
        "batch_size": batch_size,
        "planned": planned,
        "augmentation": augmentation,
        "schedule": schedule,
        "seed": seed,
        "world": world,
        "images": len(images),
        "max_seconds": max_seconds,
    }
    step, epoch0, batch0, elapsed0, history = 0, 0, 0, 0.0, []
    state_path = Path(state_file) if state_file is not None else None
    resumed = None
    if state_path is not None and state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        state = _check_state(saved, config, state_path)
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"][rank] if rank < len(state["generator"]) else gen.get_state())
        step, epoch0, batch0, elapsed0 = state["step"], state["epoch"], state["batch"], state["elapsed_s"]
        history = [h for h in state.get("val", []) if isinstance(h, dict)]
        resumed = step

    validator = ValidationCosine(teacher, val_images, spec) if val_images and rank == 0 else None
    if validator is not None and resumed is None:  # where training starts from
        c0, r0 = validator(student)
        student.train()
        if freeze_bn:
            _freeze_bn(student)
        history.append({"step": 0, "cos": round(c0, 5), "score_rms": round(r0, 5)})

    def save(epoch: int, batch: int, elapsed: float) -> None:
        gens = [gen.get_state()]
        if distributed:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, gen.get_state())
            gens = gathered
        if rank != 0 or state_path is None:
            return
        from edgeface.io import atomic_write

        data = {
            "config": config,
            "student": student.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": gens,
            "step": step,
            "epoch": epoch,
            "batch": batch,
            "elapsed_s": float(elapsed),
            "val": history,
        }
        atomic_write(state_path, lambda tmp: torch.save(data, tmp))

    bar = tqdm(
        total=planned, initial=step, desc=f"distill ({loss})", unit="step", disable=not progress or rank != 0
    )
    start = time.perf_counter() - elapsed0
    step0 = step
    last_save = time.perf_counter()
    last, recent = float("nan"), []
    val_cos, val_rms = None, None

    def elapsed() -> float:
        return time.perf_counter() - start

    stop, in_step = False, False
    done_at: tuple[int, int, Tensor] | None = None
    epoch, b = epoch0, batch0
    try:
        for epoch in range(epoch0, epochs):
            batches = epoch_batches(len(images), batch_size, epoch, seed, rank, world)
            first = batch0 if epoch == epoch0 else 0
            if first >= len(batches):
                continue
            for b, x in enumerate(batch_loader(images, spec, batches[first:], num_workers), start=first):
                done = max(step / planned, elapsed() / max_seconds if max_seconds else 0.0)
                if distributed:  # every rank must take the same number of steps, so rank 0 decides
                    flag = torch.tensor([done])
                    dist.broadcast(flag, 0)
                    done = float(flag)
                if done >= 1.0:
                    stop = True
                    break
                for group in opt.param_groups:
                    group["lr"] = lr * _lr_factor(schedule, done, warmup)
                views = augmenter(x, gen)
                if objective.two_views:
                    views = torch.cat([views, augmenter(x, gen)])
                t = frozen(views)
                s = model(views)
                value = objective.fn(s, t)
                in_step = True
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                step += 1
                in_step = False
                done_at = (epoch, b + 1, gen.get_state())
                last = float(value.detach())
                recent = (recent + [last])[-20:]
                if validator is not None and (step % val_every == 0 or step == planned):
                    val_cos, val_rms = validator(student)
                    student.train()
                    if freeze_bn:
                        _freeze_bn(student)
                    history.append(
                        {"step": step, "cos": round(val_cos, 5), "score_rms": round(val_rms, 5)}
                        | {"loss": round(last, 5)}
                    )
                if state_path is not None and time.perf_counter() - last_save >= save_every_s:
                    save(epoch, b + 1, elapsed())
                    last_save = time.perf_counter()
                post = {"loss": f"{last:.4f}"}
                if val_cos is not None:
                    post["val_cos"] = f"{val_cos:.4f}"
                    post["val_score_rms"] = f"{val_rms:.4f}"
                if max_seconds:
                    left = max(0.0, max_seconds - elapsed())
                    post["budget_left"] = f"{int(left // 60)}:{int(left % 60):02d}"
                    # the bar's total (and so its ETA) is what the time budget allows at this run's pace,
                    # when that is fewer steps than planned
                    pace = (step - step0) / max(elapsed() - elapsed0, 1e-9)
                    reach = step + pace * max(0.0, max_seconds - elapsed())
                    bar.total = max(step + 1, min(planned, int(reach)))
                bar.update(1)
                bar.set_postfix(post)
            if stop:
                break
            batch0 = 0
        if state_path is not None:
            nxt = (epoch, b) if stop else (epochs, 0)
            save(*nxt, elapsed())
    except KeyboardInterrupt:
        # Ctrl-C between steps: keep the work done since the last save (one process only: under torchrun
        # the other ranks may not reach a collective any more)
        if state_path is not None and not in_step and not distributed and done_at is not None:
            gen.set_state(done_at[2])  # the views of an unfinished batch are drawn again on resume
            save(done_at[0], done_at[1], elapsed())
        raise
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
        "wall_s": round(elapsed() - elapsed0, 2),
        "train_s": round(elapsed(), 2),
        "world_size": world,
        "augmentation": augmentation,
        "schedule": schedule,
        "resumed_from_step": resumed,
        "teacher_runtime": frozen.runtime,
        "val": history,
    }
