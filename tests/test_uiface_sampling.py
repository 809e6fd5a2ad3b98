"""Chapter 2 (UIFace): context encoder, DDPM/DDIM schedule, adaptive rule, samplers, trainer, metrics."""
import math

import numpy as np
import pytest
import torch

from facestudy import uiface as U
from facestudy.errors import ParameterError


def tiny_config() -> U.GeneratorConfig:
    return U.GeneratorConfig(image_size=8, embed_dim=12, context_dim=16, n_tokens=4, token_dim=16,
                             channels=(8, 16), attn_levels=(False, True), head_dim=8, norm_groups=4)


def test_empty_context_rate_and_context_partial_dropout():
    torch.manual_seed(0)
    enc = U.ContextEncoder(embed_dim=12, context_dim=64, n_tokens=4, token_dim=16, cpd=0.25, p_empty=0.2)
    emb = torch.randn(20000, 12)
    enc.train()
    c = enc.context(emb)
    is_empty = (c == enc.empty.detach()).all(dim=1)
    assert abs(float(is_empty.float().mean()) - 0.2) < 0.015
    # CPD: about a quarter of the projected context is zeroed, the rest rescaled by 1/(1-p)
    kept = c[~is_empty]
    assert abs(float((kept == 0).float().mean()) - 0.25) < 0.01
    enc.eval()
    c_eval = enc.context(emb)
    assert not (c_eval == enc.empty.detach()).all(dim=1).any()
    proj = enc.proj(torch.nn.functional.normalize(emb, dim=1))
    assert torch.allclose(c_eval, proj)
    assert torch.allclose(enc.context(emb[:4], empty_mask=torch.ones(4, dtype=torch.bool)),
                          enc.empty.detach().expand(4, -1))
    assert enc.empty_tokens(3).shape == (3, 4, 16)


def test_ddim_timesteps_and_schedule():
    s = U.DDPMSchedule()
    ts = s.ddim_timesteps(50)
    assert ts[0] == 980 and ts[-1] == 0 and len(ts) == 50 and all(a - b == 20 for a, b in zip(ts, ts[1:], strict=False))
    assert math.isclose(float(s.betas[0]), 1e-4) and math.isclose(float(s.betas[-1]), 0.02)
    assert s.alpha(-20) == 1.0
    with pytest.raises(ParameterError):
        s.ddim_timesteps(0)


def test_adaptive_rule_picks_first_step_below_threshold_after_one_above():
    th = 0.005
    d = [float("nan"), 0.001, 0.002, 0.010, 0.020, 0.008, 0.004, 0.003, 0.009, 0.001]
    assert U.adaptive_switch_index(d, th) == 6  # 0.001/0.002 come before any rise: ignored
    assert U.adaptive_switch_index(d, th, require_rise=False) == 1  # the official code's rule
    assert U.adaptive_switch_index([float("nan"), 0.01, 0.02, 0.03], th) is None
    assert U.adaptive_switch_index([0.006, 0.005, 0.0049], th) == 2  # "below" is strict


def test_online_adaptive_sampler_follows_the_rule():
    torch.manual_seed(0)
    gen = U.UIFaceGenerator(tiny_config()).eval()
    ident = torch.randn(6, 12)
    base = U.sample(gen, ident, U.SamplerConfig(mode="two_stage", steps=10, t0=0, record_maps=True), seed=3)
    finite = base.d[np.isfinite(base.d)]
    th = float(np.median(finite))
    cfg = U.SamplerConfig(mode="adaptive", steps=10, t0=300, th=th)
    res = U.sample(gen, ident, cfg, seed=3, keep_maps=2)
    stage1 = [i for i, t in enumerate(res.timesteps) if t >= cfg.t0]
    for k in range(len(ident)):
        # before its switch a sample sees only the empty context, so its d_t equals the unconditional run's
        idx = U.adaptive_switch_index(base.d[k, stage1], th)
        expected = res.timesteps[stage1[idx]] if idx is not None else cfg.t0
        assert res.t0[k] == expected
    assert res.maps.shape == (2, 10, 8, 8)
    assert (res.t0 >= cfg.t0).all()


def test_sampling_modes_are_seeded_and_cost_what_they_should():
    torch.manual_seed(0)
    gen = U.UIFaceGenerator(tiny_config()).eval()
    ident = torch.randn(4, 12)
    runs = {}
    for name, cfg in {
        "baseline": U.SamplerConfig(steps=6),
        "two_stage": U.SamplerConfig(mode="two_stage", steps=6, t0=500),
        "attn": U.SamplerConfig(steps=6, inject=True),
        "interval": U.SamplerConfig(mode="interval", steps=6, interval=(0, 1000)),
    }.items():
        runs[name] = U.sample(gen, ident, cfg, seed=1, batch_size=3)
    again = U.sample(gen, ident, U.SamplerConfig(steps=6), seed=1, batch_size=4)
    assert torch.equal(runs["baseline"].images, again.images)  # batching and seeds do not matter
    assert torch.equal(runs["baseline"].images, runs["interval"].images)  # full interval == baseline
    assert runs["baseline"].images.dtype == torch.uint8 and runs["baseline"].images.shape == (4, 8, 8, 3)
    assert runs["two_stage"].unet_evals == 4 * (3 + 2 * 3)  # 3 steps at t >= 500 unconditional, 3 with CFG
    assert runs["attn"].unet_evals == runs["baseline"].unet_evals
    assert not torch.equal(runs["attn"].images, runs["baseline"].images)
    with pytest.raises(ParameterError):
        U.SamplerConfig(mode="nope")


def test_training_resumes_exactly(tmp_path):
    imgs = torch.rand(10, 3, 8, 8) * 2 - 1
    ids = torch.randn(10, 12)
    torch.manual_seed(0)
    a = U.UIFaceGenerator(tiny_config())
    torch.manual_seed(0)
    b = U.UIFaceGenerator(tiny_config())
    ema_a, ha = U.train_diffusion(a, imgs, ids, steps=4, batch_size=4, seed=5)
    ck = tmp_path / "gen.pt"
    U.train_diffusion(b, imgs, ids, steps=2, batch_size=4, seed=5, checkpoint=ck, checkpoint_every=1)
    torch.manual_seed(123)
    c = U.UIFaceGenerator(tiny_config())
    ema_c, hc = U.train_diffusion(c, imgs, ids, steps=4, batch_size=4, seed=5, checkpoint=ck)
    assert hc.resumed_from == 2 and len(hc.loss) == 4
    assert np.allclose(ha.loss, hc.loss)
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values(), strict=True):
        assert torch.equal(va, vc), k
    for va, vc in zip(ema_a.model.parameters(), ema_c.model.parameters(), strict=True):
        assert torch.equal(va, vc)
    assert 0 < ema_a.decay() < 1


def test_metrics_on_constructed_sets():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1)
    emb = centres.repeat_interleave(5, 0) + 0.05 * torch.randn(15, 16, generator=g)
    labels = np.repeat(np.arange(3), 5)
    sim = U.intra_class_similarity(emb, labels)
    assert sim.shape == (3,) and (sim > 0.9).all()
    gen_s, imp_s = U.genuine_impostor(emb, labels)
    assert len(gen_s) == 3 * 10 and len(imp_s) == 105 - 30 and gen_s.mean() > imp_s.mean()
    real = torch.randn(200, 4, generator=g)
    assert U.improved_recall(real, real, k=10) == 1.0
    assert U.improved_recall(real + 100, real, k=10) == 0.0
    kept = U.filter_contexts(emb, threshold=0.5)
    assert len(kept) == 3 and list(labels[kept]) == [0, 1, 2]
    assert sorted(labels[U.farthest_point(emb, 3)]) == [0, 1, 2]
    images = np.zeros((4, 2, 2, 3), np.uint8)
    images[1] = 255
    assert np.allclose(U.pixel_diversity(images, [0, 0, 1, 1]), [1.0, 0.0])
    feats = {"l1": torch.randn(4, 3, 2, 2, generator=g)}
    feats["l1"][1] = feats["l1"][0] * 2  # same direction: LPIPS-like distance 0
    div = U.feature_diversity(feats, [0, 0, 1, 1])
    assert div[0] < 1e-6 and div[1] > 0


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_targets_round_trip_and_an_oracle_sampler_recovers_x0(prediction):
    """DDPMSchedule.target and .split invert each other; DDIM with an oracle for the target lands on x0."""
    s = U.DDPMSchedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 1.6 - 0.8
    noise = torch.randn(3, 3, 8, 8, generator=g)
    for t in (0, 37, 500, 999):
        tt = torch.full((3,), t)
        xt = s.q_sample(x0, tt, noise)
        x0_hat, eps_hat = s.split(xt, s.target(x0, tt, noise, prediction), s.alpha(t), prediction)
        assert torch.allclose(x0_hat, x0, atol=1e-3) and torch.allclose(eps_hat, noise, atol=1e-3)

    class Oracle(U.UIFaceGenerator):
        """Knows x0 and outputs the exact target for whatever x_t it is given (any context)."""

        def forward(self, x, t, tokens):
            a = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
            ref = x0.repeat(x.shape[0] // len(x0), 1, 1, 1)
            eps = (x - a.sqrt() * ref) / (1 - a).sqrt()
            return s.target(ref, t, eps, prediction)

    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.prediction = prediction
    gen = Oracle(cfg).eval()
    for mode in (U.SamplerConfig(steps=10), U.SamplerConfig(mode="two_stage", steps=10, inject=True)):
        res = U.sample(gen, torch.randn(3, 12), mode, seed=2)
        expected = U.model_to_images(x0)
        assert (res.images.int() - expected.int()).abs().max() <= 1


def test_generator_config_rejects_unknown_prediction():
    with pytest.raises(ParameterError, match="prediction"):
        U.GeneratorConfig(prediction="score")
    with pytest.raises(ParameterError, match="lr_schedule"):
        U.train_diffusion(U.UIFaceGenerator(tiny_config()), torch.zeros(2, 3, 8, 8), torch.zeros(2, 12), steps=1,
                          lr_schedule="linear")
