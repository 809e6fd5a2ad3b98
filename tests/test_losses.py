"""Margin heads against hand-computed logits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facestudy.errors import ParameterError
from facestudy.losses import SphereFace2Head, make_head, psi


def _setup(head):
    """2-d embeddings and unit class weights at known angles."""
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    theta = 0.3
    emb = torch.tensor([[3 * math.cos(theta), 3 * math.sin(theta)]])
    return emb, torch.tensor([0]), theta


def test_arcface_cosface_sphereface_logits():
    for name, m1, m2, m3 in [("arcface", 1.0, 0.5, 0.0), ("cosface", 1.0, 0.0, 0.35), ("sphereface", 1.35, 0, 0)]:
        head = make_head(name, 2, 3, s=10.0)
        emb, y, th = _setup(head)
        got = head.logits(emb, y)[0]
        want = torch.tensor([10 * (math.cos(m1 * th + m2) - m3), 10 * math.sin(th), -10 * math.cos(th)])
        assert torch.allclose(got, want, atol=1e-4), name
        assert torch.isclose(head(emb, y), F.cross_entropy(want[None], y), atol=1e-4)
        assert torch.allclose(head.logits(emb)[0], 10 * torch.tensor([math.cos(th), math.sin(th), -math.cos(th)]),
                              atol=1e-4)


def test_combined_margin_is_monotone_beyond_pi():
    t = torch.linspace(0, 3 * math.pi, 400)
    v = psi(t)
    assert torch.all(v[1:] <= v[:-1] + 1e-6)
    assert torch.isclose(psi(torch.tensor(math.pi)), torch.tensor(-1.0), atol=1e-6)
    assert torch.isclose(psi(torch.tensor(1.5 * math.pi)), torch.tensor(-2.0), atol=1e-5)


def test_softmax_head():
    head = make_head("softmax", 2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        head.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    emb = torch.tensor([[2.0, 3.0]])
    assert torch.allclose(head.logits(emb, torch.tensor([1])), torch.tensor([[2.0, 7.0, 4.0]]))


def test_adaface_logits_and_ema():
    head = make_head("adaface", 2, 3, s=10.0)
    emb, y, th = _setup(head)
    head.eval()  # no EMA update: mu = 20, sigma = 100
    z = max(-1.0, min(1.0, 0.333 * (3.0 - 20.0) / (100.0 + 1e-3)))
    want0 = 10 * (math.cos(th - 0.4 * z) - (0.4 + 0.4 * z))
    got = head.logits(emb, y)[0]
    assert abs(float(got[0].detach()) - want0) < 1e-4
    assert abs(float(got[1].detach()) - 10 * math.sin(th)) < 1e-4
    head.train()
    e2 = torch.tensor([[3.0, 0.0], [0.0, 5.0]])
    head.logits(e2, torch.tensor([0, 1]))
    norms = torch.tensor([3.0, 5.0])
    assert abs(float(head.batch_mean) - (0.99 * 20 + 0.01 * 4.0)) < 1e-5
    assert abs(float(head.batch_std) - (0.99 * 100 + 0.01 * float(norms.std()))) < 1e-5
    st = make_head("adaface", 2, 3, straight_through=True)
    st.eval()
    emb.requires_grad_(True)
    st(emb, y).backward()
    assert emb.grad is not None


def test_sphereface2_bias_logits_loss():
    lamb, r, m, t, n = 0.7, 40.0, 0.4, 3.0, 3
    b0 = SphereFace2Head.initial_bias(n, lamb, r, m, t)
    z = lamb / ((1 - lamb) * (n - 1))
    ay, ai = r * (2 * 0.5 ** t - 1 - m), r * (2 * 0.5 ** t - 1 + m)
    root = math.sqrt((1 - z) ** 2 + 4 * z * math.exp(ay - ai))
    assert abs(b0 - (math.log(2 * z) - ai - math.log(1 - z + root))) < 1e-9
    head = make_head("sphereface2", 2, n)
    assert abs(float(head.bias.detach()) - b0) < 1e-5
    head.eval()
    emb, y, th = _setup(head)
    g = lambda c: 2 * ((c + 1) / 2) ** t - 1
    cos = [math.cos(th), math.sin(th), -math.cos(th)]
    want = torch.tensor([r * (g(cos[0]) - m) + b0, r * (g(cos[1]) + m) + b0, r * (g(cos[2]) + m) + b0])
    assert torch.allclose(head.logits(emb, y)[0], want, atol=1e-3)
    loss = (50 / r) * (lamb * F.softplus(-want[0]) + (1 - lamb) * (F.softplus(want[1]) + F.softplus(want[2])))
    assert torch.isclose(head(emb, y), loss, atol=1e-4)


def test_sphereface2_initial_bias_zeroes_the_bias_gradient():
    # at cos = 0 for every class, b0 is the stationary point of the loss in b:
    # lamb * sigmoid(-(a_y + b0)) == (1 - lamb) * (N - 1) * sigmoid(a_i + b0)
    for lamb, r, m, t, n in [(0.7, 40.0, 0.4, 3.0, 100), (0.8, 64.0, 0.5, 3.0, 1000)]:
        b0 = SphereFace2Head.initial_bias(n, lamb, r, m, t)
        ay, ai = r * (2 * 0.5 ** t - 1 - m), r * (2 * 0.5 ** t - 1 + m)
        sig = lambda v: 1 / (1 + math.exp(-v))
        assert abs(lamb * sig(-(ay + b0)) - (1 - lamb) * (n - 1) * sig(ai + b0)) < 1e-6


def test_head_errors():
    with pytest.raises(ParameterError, match="valid heads"):
        make_head("magface", 2, 3)
    head = make_head("arcface", 2, 3)
    with pytest.raises(ParameterError, match="labels must lie"):
        head(torch.randn(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ParameterError, match="shape"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))


def test_margin_gradients_flow():
    for name in ("arcface", "cosface", "sphereface", "adaface", "sphereface2", "softmax"):
        head = make_head(name, 8, 5)
        emb = torch.randn(4, 8, requires_grad=True)
        head(emb, torch.tensor([0, 1, 2, 3])).backward()
        assert emb.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0, name
