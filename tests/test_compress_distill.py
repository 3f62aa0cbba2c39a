"""Distillation losses and the distill loop (single process and torchrun/DDP), on real LFW faces."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edgeface.compress.data import Augmenter, FaceImages, augment, epoch_batches
from edgeface.compress.distill import cosine_kd_loss, distill, ekd_loss, relation_kd_loss
from edgeface.data.folders import compression_images
from edgeface.errors import EdgefaceError
from edgeface.models.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
USER_MODEL = "tests._user_model:tiny_face_net"


def test_cosine_kd_loss_is_scale_free_and_bounded() -> None:
    t = torch.randn(8, 16)
    assert cosine_kd_loss(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_kd_loss(-t, t).item() == pytest.approx(2.0, abs=1e-6)
    s = torch.randn(8, 16, requires_grad=True)
    teacher = t.clone().requires_grad_(True)
    cosine_kd_loss(s, teacher).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher is a target, never trained


def _two_views(n: int = 24, dim: int = 32, noise: float = 0.2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, dim, generator=g)
    return torch.cat([base, base + noise * torch.randn(n, dim, generator=g)])


def test_ekd_loss_penalises_wrong_decisions_relative_to_teacher() -> None:
    teacher = _two_views()
    n = teacher.shape[0] // 2
    same = ekd_loss(teacher.clone(), teacher).item()
    # an impostor pair made to look identical: a false accept the teacher does not make
    false_accept = teacher.clone()
    false_accept[n + 1] = teacher[0]
    # a genuine pair pulled apart: a false reject the teacher does not make
    false_reject = teacher.clone()
    false_reject[n + 2] = -teacher[2]
    assert ekd_loss(false_accept, teacher).item() > same + 0.05
    assert ekd_loss(false_reject, teacher).item() > same + 0.05
    with pytest.raises(ValueError):
        ekd_loss(teacher[:3], teacher[:3])  # odd rows: not two views per image


def test_ekd_gradients_reach_only_the_student_and_the_loss_descends() -> None:
    teacher = _two_views(seed=1).requires_grad_(True)
    student = (teacher.detach() + 0.8 * torch.randn_like(teacher)).requires_grad_(True)
    opt = torch.optim.Adam([student], lr=0.05)
    losses = []
    for _ in range(25):
        loss = ekd_loss(student, teacher)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(student.grad).all()
        opt.step()
        losses.append(loss.item())
    assert teacher.grad is None
    assert losses[-1] < 0.5 * losses[0]


def test_augment_keeps_shape_and_changes_pixels() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = augment(x, torch.Generator().manual_seed(0), max_shift=2)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_relation_kd_ignores_rotations_but_not_changed_scores() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(16, 32, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(32, 32, generator=g))
    # a rotated embedding space scores every pair the same: nothing to learn (cosine KD would object)
    assert relation_kd_loss(3.0 * t @ rotation, t).item() == pytest.approx(0.0, abs=1e-8)
    assert cosine_kd_loss(t @ rotation, t).item() > 0.5
    moved = t.clone()
    moved[3] = t[7]  # image 3 now looks like image 7: an impostor pair that would be accepted
    assert relation_kd_loss(moved, t).item() > 0.05
    s = moved.clone().requires_grad_(True)
    teacher = t.clone().requires_grad_(True)
    relation_kd_loss(s, teacher).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and teacher.grad is None


def test_strong_augmentation_is_seeded_and_stays_in_the_input_range() -> None:
    spec = build_model(USER_MODEL)[1]
    x = torch.rand(6, 3, 112, 112) * 2 - 1  # normalised with mean = std = 0.5: [-1, 1]
    strong = Augmenter(spec, "strong")
    a = strong(x, torch.Generator().manual_seed(3))
    b = strong(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and torch.isfinite(a).all()
    assert not torch.allclose(a, x)
    assert float(a.min()) >= -1.0 - 1e-5 and float(a.max()) <= 1.0 + 1e-5  # colour clamped to pixels
    assert torch.equal(Augmenter(spec, "basic")(x, torch.Generator().manual_seed(3)),
                       augment(x, torch.Generator().manual_seed(3)))  # fmt: skip
    with pytest.raises(EdgefaceError):
        Augmenter(spec, "extreme")


def test_epoch_batches_are_reproducible_and_shard_evenly() -> None:
    assert epoch_batches(50, 8, 0, 1) == epoch_batches(50, 8, 0, 1)
    assert epoch_batches(50, 8, 0, 1) != epoch_batches(50, 8, 1, 1)
    one = epoch_batches(50, 8, 0, 1)
    assert all(len(b) == 8 for b in one) and len(one) == 6  # drop_last keeps batches full
    shards = [epoch_batches(51, 4, 2, 0, rank, 2) for rank in range(2)]
    assert len(shards[0]) == len(shards[1])  # DDP ranks take the same number of steps
    seen = {i for shard in shards for b in shard for i in b}
    assert len(seen) >= 48 and seen <= set(range(51))
    assert (
        epoch_batches(5, 8, 0, 0) == [epoch_batches(5, 8, 0, 0)[0]] and len(epoch_batches(5, 8, 0, 0)[0]) == 5
    )


@pytest.fixture(scope="module")
def faces(lfw) -> list[Path]:
    return compression_images(lfw)[:16]


def test_distill_recovers_a_perturbed_student_on_real_faces(faces) -> None:
    images = faces
    torch.manual_seed(0)
    teacher, spec = build_model(USER_MODEL)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.stack([FaceImages(images, spec)[i] for i in range(len(images))])

    def gap() -> float:
        with torch.no_grad():
            return cosine_kd_loss(student.eval()(x), teacher.eval()(x)).item()

    start = gap()
    stats = distill(student, teacher, images, spec, loss="cosine+ekd", lr=3e-3, batch_size=8, epochs=10,
                    max_steps=10, progress=False, freeze_bn=True)  # fmt: skip
    assert stats["steps"] == 10 and stats["world_size"] == 1
    assert gap() < 0.7 * start
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_teacher.items())


def test_distill_resumes_bit_exactly_after_ctrl_c(faces, tmp_path, monkeypatch) -> None:
    import edgeface.compress.distill as distill_module

    torch.manual_seed(0)
    teacher, spec = build_model(USER_MODEL)
    start = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.3 * torch.randn_like(p))
    kwargs = dict(loss="cosine+relation", lr=3e-3, batch_size=4, epochs=2, max_steps=6, progress=False,
                  augmentation="strong", val_images=faces[:8], val_every=2)  # fmt: skip
    whole = copy.deepcopy(start)
    stats = distill(whole, teacher, faces, spec, **kwargs)
    assert [h["step"] for h in stats["val"]] == [0, 2, 4, 6] and all(0 < h["cos"] <= 1 for h in stats["val"])

    state = tmp_path / "distill.pt"
    real, calls = distill_module._lr_factor, {"n": 0}

    def ctrl_c(*a):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # in step 4, after 3 finished steps, long before a timed save
        return real(*a)

    monkeypatch.setattr(distill_module, "_lr_factor", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        distill(copy.deepcopy(start), teacher, faces, spec, state_file=state, save_every_s=1e9, **kwargs)
    monkeypatch.setattr(distill_module, "_lr_factor", real)
    assert state.is_file()
    resumed = copy.deepcopy(start)
    stats = distill(resumed, teacher, faces, spec, state_file=state, **kwargs)
    assert stats["resumed_from_step"] == 3 and stats["steps"] == 6
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(EdgefaceError, match="other settings"):
        distill(copy.deepcopy(start), teacher, faces, spec, state_file=state, **{**kwargs, "lr": 1e-3})


WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch, torch.distributed as dist
    from edgeface.compress.distill import distill
    from edgeface.models.registry import build_model

    out = Path(sys.argv[1])
    images = [Path(p) for p in json.loads((out / "images.json").read_text())]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sys.stderr = open(out / f"rank{rank}.err", "w")  # tqdm writes here: only rank 0 may show a bar
    torch.manual_seed(0)
    teacher, spec = build_model("tests._user_model:tiny_face_net")
    torch.manual_seed(1)
    student, _ = build_model("tests._user_model:tiny_face_net")
    torch.save(student.state_dict(), out / "init.pt")
    stats = distill(student, teacher, images, spec, loss="cosine+ekd",
                    batch_size=4, epochs=2, max_steps=3, progress=True, seed=0)
    torch.save(student.state_dict(), out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps(stats))
    sys.stderr.close()
    dist.destroy_process_group()
    """
)


def test_distill_under_torchrun_two_ranks_end_identical(faces, tmp_path) -> None:
    (tmp_path / "images.json").write_text(json.dumps([str(p) for p in faces]))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = torch.load(tmp_path / "init.pt", weights_only=True)
    assert all(torch.equal(s0[k], s1[k]) for k in s0), "DDP ranks diverged"
    assert any(not torch.equal(s0[k], init[k]) for k in s0), "student did not train"
    stats = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert stats[0] == {**stats[0], "world_size": 2, "steps": 3}
    assert stats[0]["final_loss"] == pytest.approx(stats[1]["final_loss"])
    assert "distill" in (tmp_path / "rank0.err").read_text()
    assert "distill" not in (tmp_path / "rank1.err").read_text()


def test_frozen_teacher_runs_in_onnxruntime_with_torch_outputs() -> None:
    from edgeface.compress.distill import FrozenTeacher

    model, _ = build_model(USER_MODEL)
    model.eval()
    x = torch.randn(4, 3, 112, 112)
    frozen = FrozenTeacher(model)
    got = frozen(x)
    assert frozen.runtime == "onnxruntime"  # the exported graph reproduced torch, so it is used
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    with torch.no_grad():  # later batches (another size) go through the same session
        assert torch.allclose(frozen(x[:3]), model(x[:3]), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert FrozenTeacher(model, "torch")(x).equal(ref) and FrozenTeacher(model, "torch").runtime == "torch"
    with pytest.raises(EdgefaceError, match="teacher runtime"):
        FrozenTeacher(model, "onnxruntime")
