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

from edgeface.compress.data import FaceImages, augment
from edgeface.compress.distill import cosine_kd_loss, distill, ekd_loss
from edgeface.data.folders import compression_images
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
