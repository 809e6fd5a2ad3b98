"""Chapter 4 (FaceMINT) SAE tests: toy sparse-dictionary recovery, JumpReLU STE, unit-norm decoders."""
from __future__ import annotations

import math

import pytest
import torch

from facestudy.errors import ParameterError
from facestudy.interpret import saes
from facestudy.interpret.saes import metrics


def toy_problem(d: int = 16, m_true: int = 24, n: int = 2048, k: int = 2, seed: int = 0):
    """x = sum of k unit atoms (out of m_true) with magnitudes in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(m_true, d, generator=g), dim=1)
    codes = torch.zeros(n, m_true)
    idx = torch.rand(n, m_true, generator=g).argsort(1)[:, :k]
    codes.scatter_(1, idx, torch.rand(n, k, generator=g) + 0.5)
    return codes @ atoms, atoms


SETTINGS = {
    "vanilla": dict(l1_coeff=0.3, lr=1e-2),
    "vanilla-april": dict(l1_coeff=0.3, lr=1e-2, convention="april"),
    "gated": dict(l1_coeff=2.0, lr=1e-2),
    "topk": dict(k=2, lr=1e-2),
    "jumprelu": dict(l0_coeff=3e-2, lr=1e-2, bandwidth=0.05, theta0=0.05),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_sae_reconstructs_toy_sparse_dictionary(name):
    x, atoms = toy_problem()
    kind = name.split("-")[0]
    sae = saes.create(kind, d_in=16, n_latents=48, lr_warmup=20, **SETTINGS[name])
    res = saes.train_sae(sae, x, steps=400, batch_size=128, seed=0)
    final = res.final
    assert final["EV"] > 0.9, final
    assert final["L0"] < 16, final  # sparser than a dense code of the input dimension
    w = torch.nn.functional.normalize(res.sae.W_dec.detach(), dim=0)
    recovered = (atoms @ w).max(1).values.mean().item()
    # 48 random directions in 16-d give about 0.5; the learned dictionary matches the true atoms
    assert recovered > 0.75, recovered
    if kind != "vanilla" or SETTINGS[name].get("convention") != "april":
        norms = res.sae.decoder_norms
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_training_repeats_exactly():
    x, _ = toy_problem(n=256)
    a = saes.train_sae(saes.create("topk", d_in=16, n_latents=32, k=2), x, steps=20, batch_size=64, seed=3)
    b = saes.train_sae(saes.create("topk", d_in=16, n_latents=32, k=2), x, steps=20, batch_size=64, seed=3)
    assert torch.equal(a.sae.W_dec, b.sae.W_dec)


def test_jumprelu_threshold_gradient_matches_rectangle_kernel():
    eps = 1e-3
    theta = torch.full((5,), 0.01, dtype=torch.float64, requires_grad=True)
    # distances to theta: inside the window (|u| < eps/2) for columns 1 and 3 only
    pi = torch.tensor([[0.0, 0.0103, 0.0120, 0.0096, 0.5],
                       [0.0104, 0.0099, 0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = saes.jumprelu(pi, theta, eps)
    upstream = torch.arange(1.0, 11.0, dtype=torch.float64).reshape(2, 5)
    (out * upstream).sum().backward()
    inside = ((pi - theta).abs() < eps / 2).double()
    expected_theta = (-(theta / eps) * inside * upstream).sum(0)
    assert torch.allclose(theta.grad, expected_theta)
    assert theta.grad[1] != 0 and theta.grad[2] == 0
    assert torch.allclose(pi.grad, upstream * (pi > theta).double())

    theta.grad = None
    pi.grad = None
    saes.step(pi, theta, eps).mul(upstream).sum().backward()
    assert torch.allclose(theta.grad, (-(1.0 / eps) * inside * upstream).sum(0))
    assert torch.all(pi.grad == 0)


def test_jumprelu_defaults_are_paper_values():
    cfg = saes.make_config("jumprelu")
    assert cfg.bandwidth == 1e-3 and cfg.theta0 == 1e-3
    sae = saes.create(cfg)
    assert torch.allclose(sae.threshold, torch.full((sae.n_latents,), 1e-3))


@pytest.mark.parametrize("kind", ["vanilla", "gated", "topk", "jumprelu"])
def test_decoder_columns_stay_unit_norm(kind):
    x, _ = toy_problem(n=512)
    sae = saes.create(kind, d_in=16, n_latents=32, lr=5e-2)
    saes.train_sae(sae, x, steps=15, batch_size=64)
    assert sae.unit_norm_decoder
    assert torch.allclose(sae.decoder_norms, torch.ones(32), atol=1e-5)


def test_parallel_gradient_is_removed():
    sae = saes.create("vanilla", d_in=8, n_latents=4)
    sae.W_dec.grad = sae.W_dec.detach().clone() * 3 + torch.randn(8, 4)
    sae.before_step()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(0), torch.zeros(4), atol=1e-5)


def test_geometric_median_is_robust():
    x = torch.zeros(101, 2)
    x[:50, 0] = 1.0
    x[100] = torch.tensor([1000.0, 1000.0])
    med = saes.geometric_median(x)
    assert med.norm() < 1.0 and x.mean(0).norm() > 5


def test_metrics_by_hand():
    f = torch.tensor([[0.0, 2.0, 0.0], [1.0, -1.0, 0.0]])
    assert metrics.l0(f) == 1.5
    assert metrics.l1(f) == 2.0
    assert math.isclose(metrics.alive_percent(f), 200 / 3, rel_tol=1e-6)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.explained_variance(x, x) == 1.0
    assert metrics.explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-6)
    assert metrics.mse(x, torch.zeros_like(x)) == 1.0


def test_pca_baseline_reconstructs_with_all_components():
    x, _ = toy_problem(n=300)
    pca = saes.PCA().fit(x)
    xh, z = pca(x)
    assert metrics.explained_variance(x, xh) > 0.9999
    assert z.shape == (300, 16)
    assert torch.all(pca.explained_variance[:-1] >= pca.explained_variance[1:])


def test_bad_settings_raise_parameter_error():
    with pytest.raises(ParameterError, match="valid kinds"):
        saes.create("relu2")
    with pytest.raises(ParameterError, match="unknown setting"):
        saes.create("topk", kk=3)
    with pytest.raises(ParameterError, match="TopKConfig.k"):
        saes.create("topk", d_in=4, n_latents=8, k=9)
    with pytest.raises(ParameterError, match="shape"):
        saes.create("vanilla", d_in=4).encode(torch.zeros(2, 5))
