"""Chapter 2 (UIFace): attention processors, cross-attention maps, statistics matching."""
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from facestudy import uiface as U


def tiny_generator(seed: int = 0) -> U.UIFaceGenerator:
    torch.manual_seed(seed)
    cfg = U.GeneratorConfig(image_size=16, embed_dim=12, context_dim=16, n_tokens=4, token_dim=16,
                            channels=(8, 16), attn_levels=(False, True), head_dim=8, norm_groups=4)
    gen = U.UIFaceGenerator(cfg).eval()
    # diffusers zero-initialises nothing we rely on, but make every weight non-trivial for the comparison
    with torch.no_grad():
        for p in gen.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return gen


def inputs(gen, b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g)
    t = torch.tensor([10, 500, 990][:b])
    tok = gen.context(torch.randn(b, 12, generator=g))
    return x, t, tok


def test_disabled_processors_reproduce_stock_attention_exactly():
    gen = tiny_generator()
    x, t, tok = inputs(gen)
    with torch.no_grad():
        gen.unet.set_attn_processor(AttnProcessor())
        stock = gen(x, t, tok)
        with U.attention_control(gen) as ctrl:
            assert all(isinstance(p, U.UIFaceAttnProcessor) for p in gen.unet.attn_processors.values())
            ours = gen(x, t, tok)
            ctrl.configure(paired=True)  # paired but no switch on: still stock
            ours_paired = gen(torch.cat([x, x]), torch.cat([t, t]), torch.cat([tok, tok]))
        restored = gen(x, t, tok)
    assert torch.equal(stock, ours)
    assert torch.equal(stock, restored)
    assert torch.allclose(ours_paired[3:], stock, atol=1e-5)
    assert all(isinstance(p, AttnProcessor) for p in gen.unet.attn_processors.values())


def test_context_manager_restores_processors_after_an_error():
    gen = tiny_generator()
    before = gen.unet.attn_processors
    with pytest.raises(RuntimeError):
        with U.attention_control(gen):
            raise RuntimeError("boom")
    after = gen.unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_self_injection_changes_only_the_conditional_half():
    gen = tiny_generator()
    x, t, tok = inputs(gen)
    e = gen.context.empty_tokens(3)
    xx, tt, cc = torch.cat([x, x]), torch.cat([t, t]), torch.cat([e, tok])
    with torch.no_grad(), U.attention_control(gen) as ctrl:
        plain = gen(xx, tt, cc)
        ctrl.configure(paired=True, inject_self=True, match_cross=True)
        injected = gen(xx, tt, cc)
        # identical halves: injection is a no-op (self logits equal, statistics equal)
        same = gen(torch.cat([x, x]), tt, torch.cat([tok, tok]))
    assert torch.allclose(injected[:3], plain[:3], atol=1e-6)
    assert not torch.allclose(injected[3:], plain[3:], atol=1e-4)
    assert torch.allclose(same[:3], same[3:], atol=1e-5)


def test_statistics_matching_hits_the_target_moments():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(5, 7, 9, generator=g) * 3 + 1
    uncond = torch.randn(5, 7, 9, generator=g) * 0.5 - 2
    out = U.match_statistics(cond, uncond, weight=0.5)
    mu_t = 0.5 * cond.mean(-1) + 0.5 * uncond.mean(-1)
    sd_t = 0.5 * cond.std(-1) + 0.5 * uncond.std(-1)
    assert torch.allclose(out.mean(-1), mu_t, atol=1e-4)
    assert torch.allclose(out.std(-1), sd_t, atol=1e-3)
    assert torch.allclose(U.match_statistics(cond, uncond, weight=0.0), cond, atol=1e-4)


def test_cross_attention_map_is_normalised_and_recorded_per_layer():
    gen = tiny_generator()
    x, t, tok = inputs(gen)
    with torch.no_grad(), U.attention_control(gen) as ctrl:
        ctrl.configure(record_cross=True)
        gen(x, t, tok)
        n_cross = sum(1 for k in gen.unet.attn_processors if ".attn2." in k)
        assert len(ctrl.cross_logits) == n_cross > 0
        a = U.cross_attention_map(ctrl.cross_logits, 16)
    assert a.shape == (3, 16, 16)
    assert torch.allclose(a.flatten(1).amin(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(a.flatten(1).amax(1), torch.ones(3), atol=1e-6)
    assert torch.allclose(U.map_change(a, a), torch.zeros(3))
    with pytest.raises(ValueError):
        U.cross_attention_map([], 16)
