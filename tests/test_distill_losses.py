"""Chapter 5 (unified knowledge distillation): loss values, hard-mining gradients, memory bank."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from facestudy.distill import (
    DistillConfig,
    DistillLoss,
    ILEDConfig,
    MemoryBank,
    RPSDConfig,
    cosine_kd_loss,
    iled_loss,
    iled_weights,
    l2_kd_loss,
    relational_kd_loss,
    rpsd_loss,
)
from facestudy.distill.losses import relation_matrices
from facestudy.errors import ParameterError

TB = RPSDConfig(bank="teacher")  # cross-model relations against a bank of teacher embeddings


def unit(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), math.sin(a)]], dtype=torch.float64)


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------ ILED
def test_iled_hand_computed_values() -> None:
    t = unit(0)
    # identical embeddings: c = 1 -> (1/40) log(1 + e^{40(0.9-1)+0.1})
    assert float(iled_loss(unit(0), t)) == pytest.approx(sp(-3.9) / 40, rel=1e-9)
    # 60 degrees apart: c = 0.5 -> (1/40) log(1 + e^{16.1})
    assert float(iled_loss(unit(60), t)) == pytest.approx(sp(16.1) / 40, rel=1e-9)
    # batch mean of both, and scale invariance (embeddings are normalised inside)
    both = iled_loss(torch.cat([unit(0), 3 * unit(60)]), torch.cat([t, 2 * t]))
    assert float(both) == pytest.approx((sp(-3.9) + sp(16.1)) / 80, rel=1e-9)
    # the alternative placement of b: r (s + b - c)
    cfg = ILEDConfig(b_placement="margin")
    assert float(iled_loss(unit(60), t, cfg)) == pytest.approx(sp(40 * (1.0 - 0.5)) / 40, rel=1e-9)


def test_iled_gradient_weight_grows_as_cosine_falls() -> None:
    cs = torch.linspace(-0.5, 0.999, 40, dtype=torch.float64)
    t = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(len(cs), 2)
    c = cs.clone().requires_grad_(True)
    # student rows with cosine exactly c to the teacher (unit norm, so d cos / d c = 1)
    student = torch.stack([c, torch.sqrt(1 - c ** 2)], dim=1)
    loss = iled_loss(student, t)
    loss.backward()
    weight = -c.grad * len(cs)  # per-sample weight = -B dL/dc
    assert torch.allclose(weight, iled_weights(cs), atol=1e-9)
    # monotone: lower cosine (harder sample) -> larger weight
    assert torch.all(weight[:-1] >= weight[1:] - 1e-12)
    live = cs > 0.6  # outside float saturation the increase is strict
    assert torch.all(weight[live][:-1] > weight[live][1:])
    assert weight[0] > 0.999 and weight[-1] < 0.05  # hard ~ 1, aligned ones down-weighted


def test_iled_never_reaches_teacher() -> None:
    teacher_net = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    student = torch.randn(5, 3, requires_grad=True)
    iled_loss(student, teacher_net(x)).backward()
    assert teacher_net.weight.grad is None and student.grad is not None


# ------------------------------------------------------------------------------------------ RPSD
def test_rpsd_hand_computed_values() -> None:
    t = unit(0)
    bank = torch.cat([unit(0), unit(90)]).to(torch.float64)
    # 2 degrees off: |S^S - S^T| = (1 - cos 2°, sin 2°) both below t = 0.05 -> nothing mined -> 0
    assert float(rpsd_loss(unit(2), t, bank, TB)) == 0.0
    # 10 degrees off: only the second relation (sin 10° = 0.174) is mined
    d = math.sin(math.radians(10))
    expected = sp(60 * (d - 0.05) + 1) / 60
    assert float(rpsd_loss(unit(10), t, bank, TB)) == pytest.approx(expected, rel=1e-9)
    # 60 degrees off against bank row (1, 0): d = 0.5
    assert float(rpsd_loss(unit(60), t, unit(0), TB)) == pytest.approx(sp(60 * 0.45 + 1) / 60, rel=1e-9)
    # L1 / L2 forms on the same mined pair
    assert float(rpsd_loss(unit(60), t, unit(0), RPSDConfig(form="l1", bank="teacher"))) == pytest.approx(0.5)
    assert float(rpsd_loss(unit(60), t, unit(0), RPSDConfig(form="l2", bank="teacher"))) == pytest.approx(0.25)
    # student bank (intra-model): student row 60° vs its own bank row 30° (cos 30°), teacher 0° vs 0° (1)
    got = float(rpsd_loss(unit(60), t, unit(0), RPSDConfig(), bank_student=unit(30)))
    d = 1 - math.cos(math.radians(30))
    assert got == pytest.approx(sp(60 * (d - 0.05) + 1) / 60, rel=1e-9)
    with pytest.raises(ParameterError, match="bank_student"):
        rpsd_loss(unit(60), t, unit(0))  # intra relations need the student bank


def test_rpsd_in_batch_ignores_diagonal_and_uses_pairs() -> None:
    # batch of two: teacher rows 0° and 90°; student rows 0° and 30°
    t = torch.cat([unit(0), unit(90)])
    s = torch.cat([unit(0), unit(30)])
    # off-diagonal relation: student cos 30° = 0.866, teacher 0 -> d = 0.866 (twice, symmetric)
    expected = sp(60 * (math.cos(math.radians(30)) - 0.05) + 1) / 60
    assert float(rpsd_loss(s, t, None)) == pytest.approx(expected, rel=1e-9)


def test_rpsd_gradient_is_zero_for_unmined_pairs_and_flows_to_student() -> None:
    torch.manual_seed(0)
    t = nn.functional.normalize(torch.randn(4, 8), dim=1)
    s = (t + 0.3 * torch.randn(4, 8)).requires_grad_(True)
    bank = torch.randn(6, 8)
    loss = rpsd_loss(s, t, bank, TB)
    loss.backward()
    assert loss.item() > 0 and s.grad.abs().sum() > 0
    s2 = t.clone().requires_grad_(True)  # student = teacher: nothing mined
    l2 = rpsd_loss(s2, t, bank, TB)
    l2.backward()
    assert l2.item() == 0.0 and torch.all(s2.grad == 0)


# -------------------------------------------------------------------------------------- baselines
def test_baseline_values() -> None:
    s, t = unit(0), unit(90)
    assert float(l2_kd_loss(s, t)) == pytest.approx(1.0)  # mean squared error over the D = 2 entries
    # raw L2 sees the norm, the normalised variant does not (it is 2/D x cosine KD)
    assert float(l2_kd_loss(3 * unit(0), unit(0))) == pytest.approx(2.0)
    assert float(l2_kd_loss(3 * unit(0), unit(0), normalize=True)) == pytest.approx(0.0)
    assert float(l2_kd_loss(3 * unit(0), 2 * unit(90), normalize=True)) == pytest.approx(
        2 / 2 * float(cosine_kd_loss(unit(0), unit(90))))
    assert float(cosine_kd_loss(s, t)) == pytest.approx(1.0)
    assert float(cosine_kd_loss(unit(60), unit(0))) == pytest.approx(0.5)
    # relational: teacher pair orthogonal (0), student pair 60° (0.5) -> MSE 0.25
    assert float(relational_kd_loss(torch.cat([unit(0), unit(60)]), torch.cat([unit(0), unit(90)]))) == \
        pytest.approx(0.25)


def test_shape_mismatch_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match="embedding"):
        iled_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ParameterError):
        ILEDConfig(b_placement="inside")
    with pytest.raises(ParameterError, match="valid"):
        DistillConfig(method="fitnets")
    with pytest.raises(ParameterError, match="bank"):
        RPSDConfig(bank="both")


# ------------------------------------------------------------------------------------------- bank
def test_memory_bank_is_fifo_with_capacity() -> None:
    bank = MemoryBank.for_batch(batch_size=2, dim=3)  # 3 x batch = 6 rows
    assert bank.capacity == 6 and len(bank) == 0
    rows = torch.arange(24, dtype=torch.float32).reshape(8, 3)  # row k = [3k, 3k+1, 3k+2]
    bank.enqueue(rows[0:2])
    assert len(bank) == 2 and torch.equal(bank.contents(), rows[0:2])
    for k in range(1, 4):
        bank.enqueue(rows[2 * k:2 * k + 2])
    assert len(bank) == 6
    assert torch.equal(bank.contents(), rows[2:8])  # the oldest batch was dropped, order oldest -> newest
    bank.enqueue(rows[0:1])
    assert torch.equal(bank.contents(), torch.cat([rows[3:8], rows[0:1]]))
    bank.enqueue(torch.cat([rows, rows]))  # more rows than capacity: the newest 6 survive
    assert torch.equal(bank.contents(), rows[2:8])
    with pytest.raises(ParameterError):
        bank.enqueue(torch.zeros(2, 4))


def test_bank_never_backpropagates_into_teacher() -> None:
    torch.manual_seed(0)
    teacher_net = nn.Linear(5, 4)
    student_net = nn.Linear(5, 4)
    kd = DistillLoss(DistillConfig(method="iled+rpsd"), batch_size=3, teacher_dim=4)
    for step in range(3):
        x = torch.randn(3, 5)
        t_emb = teacher_net(x)  # deliberately NOT detached by the caller
        assert t_emb.requires_grad
        loss = kd(student_net(x), t_emb)
        loss.backward()
        assert teacher_net.weight.grad is None and teacher_net.bias.grad is None
        assert not kd.bank.contents().requires_grad
        assert len(kd.bank) == min(9, 3 * (step + 1))
    assert student_net.weight.grad is not None and student_net.weight.grad.abs().sum() > 0


def test_distill_loss_bank_enqueued_after_use() -> None:
    kd = DistillLoss(DistillConfig(method="rpsd"), batch_size=2, teacher_dim=2)
    t = torch.cat([unit(0), unit(90)]).float()
    s = torch.cat([unit(0), unit(30)]).float()
    first = kd(s, t)  # bank empty: in-batch relations only
    assert float(first) == pytest.approx(40 * float(rpsd_loss(s, t, None)), rel=1e-6)
    second = kd(s, t)  # now relations against the stored batch: student bank (default), intra-model
    assert float(second) == pytest.approx(40 * float(rpsd_loss(s, t, t, bank_student=s)), rel=1e-6)
    assert set(kd.last) >= {"rpsd", "kd_total", "cos_st", "iled_w_lt_half"}
    kt = DistillLoss(DistillConfig(method="rpsd", rpsd=TB), batch_size=2, teacher_dim=2)
    kt(s, t)
    assert float(kt(s, t)) == pytest.approx(40 * float(rpsd_loss(s, t, t, TB)), rel=1e-6)


def test_intra_relations_are_rotation_invariant_cross_are_not() -> None:
    torch.manual_seed(0)
    t, s = torch.randn(5, 6), torch.randn(5, 6)
    bt, bs = torch.randn(7, 6), torch.randn(7, 6)
    q, _ = torch.linalg.qr(torch.randn(6, 6))  # a rotation of the student's embedding space
    intra = RPSDConfig(mining=False)
    a = rpsd_loss(s, t, bt, intra, bank_student=bs)
    b = rpsd_loss(s @ q, t, bt, intra, bank_student=bs @ q)
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    cross = RPSDConfig(bank="teacher", mining=False)
    assert abs(float(rpsd_loss(s, t, bt, cross)) - float(rpsd_loss(s @ q, t, bt, cross))) > 1e-3


def test_in_batch_references_keep_the_relation_type() -> None:
    # D4 changes one factor: bank vs batch references with the same relation type
    t = torch.cat([unit(0), unit(90)])
    s = torch.cat([unit(0), unit(30)])
    ss, st = relation_matrices(s, t, None, relation="cross")  # student rows vs the teacher batch
    assert torch.allclose(ss, s @ t.T) and torch.allclose(st, t @ t.T)
    ss, st = relation_matrices(s, t, None, relation="intra")
    assert torch.allclose(ss, s @ s.T)
    nob = DistillLoss(DistillConfig(method="rpsd_nobank", rpsd=TB), batch_size=2, teacher_dim=2)
    for _ in range(2):  # never uses a bank, whatever was seen before
        assert float(nob(s.float(), t.float())) == pytest.approx(40 * float(rpsd_loss(s, t, None, TB)), rel=1e-6)
    assert len(nob.bank) == 0


def test_distill_loss_none_and_weights() -> None:
    s, t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    none = DistillLoss(DistillConfig(method="none"), 4, 6)(s, t)
    assert float(none.detach()) == 0.0 and none.requires_grad
    cfg = DistillConfig(method="iled", lambda_iled=2.5)
    got = float(DistillLoss(cfg, 4, 6)(s, t).detach())
    assert got == pytest.approx(2.5 * float(iled_loss(s, t).detach()), rel=1e-6)
    sweep = cfg.with_(iled_s=0.8, rpsd_t=0.1)
    assert sweep.iled.s == 0.8 and sweep.rpsd.t == 0.1 and sweep.lambda_iled == 2.5
    with pytest.raises(ParameterError, match="embedding_dim=6"):
        DistillLoss(cfg, 4, teacher_dim=6, student_dim=8)
