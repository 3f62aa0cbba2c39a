"""QAT never hands back a model worse than the PTQ start it trained from (real MobileFaceNet, real faces)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from edgeface.compress.quant import qat
from edgeface.compress.quant.ptq import load_batches
from edgeface.compress.quant.qat import default_lr, held_out
from edgeface.data.folders import compression_images
from edgeface.models.loading import load_model


def test_held_out_faces_are_a_seeded_disjoint_quarter(lfw: Path) -> None:
    images = compression_images(lfw)[:40]
    train, held = held_out(images, seed=0)
    assert len(held) == 10 and len(train) == 30 and not set(train) & set(held)
    assert held_out(images, seed=0) == (train, held) and held_out(images, seed=1)[1] != held
    assert held_out(images[:20], seed=0) == (images[:20], [])  # too few to spare 8 faces: no check


def test_qat_that_hurts_the_held_out_faces_keeps_the_ptq_weights(lfw: Path, mfn_weights: Path) -> None:
    fp32 = load_model("mobilefacenet", mfn_weights)
    images = compression_images(lfw)[:48]
    # lr 0.05 wrecks the network in 3 steps: without the check this model would be returned
    q, stats = qat(
        fp32.model, fp32.spec, images, bits="w8a8", lr=0.05, batch_size=4, max_steps=3,
        calibration="minmax", num_images=16, progress=False,
    )  # fmt: skip
    rec = q.edgeface_quant
    assert stats["steps"] == 3 and rec["train_images"] == 36 and rec["held_out_images"] == 12
    assert rec["held_out_cos_qat"] < rec["held_out_cos_ptq"] - 0.05 and rec["kept"] == "ptq"
    _, held = held_out(images, seed=0)
    x = load_batches(held, fp32.spec)[0]
    with torch.no_grad():
        cos = F.cosine_similarity(fp32.model(x), q(x)).mean().item()
    assert abs(cos - rec["held_out_cos_ptq"]) < 1e-3 and cos > 0.98  # the PTQ start itself, not the wreck


def test_default_qat_rate_is_finer_for_8_bit_weights() -> None:
    # 5e-5 lowered mobilefacenet w8a8's cosine to fp32 in 20 steps, 1e-5 raised it (qat.py)
    assert default_lr("w8a8") == 1e-5 and default_lr("W8A8") == 1e-5
    assert default_lr("w6a6") == 5e-5 and default_lr("mixed") == 5e-5
