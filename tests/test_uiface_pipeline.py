"""Chapter 2 (UIFace): profile entries, paper-profile file check, downstream helpers."""
import numpy as np
import pytest

from facestudy import profiles
from facestudy.errors import DataError, ParameterError
from facestudy.uiface import GeneratorConfig
from facestudy.uiface import pipeline as P


@pytest.mark.parametrize("profile", profiles.PROFILES)
def test_every_profile_gives_a_valid_generator_and_sampler(profile):
    cfg = profiles.resolve("02_uiface", profile)
    g = P.generator_config(cfg)
    assert isinstance(g, GeneratorConfig) and g.image_size == cfg.image_size
    if cfg.guidance < 0:  # tuned by the chapter on its grid (tune_guidance)
        assert cfg.guidance_grid and min(cfg.guidance_grid) >= 0 and cfg.guidance_identities >= 2
        with pytest.raises(ParameterError, match="guidance"):
            P.sampler(cfg)
        cfg.guidance = cfg.guidance_grid[0]
    s = P.sampler(cfg, mode="adaptive", inject=True)
    assert s.steps == cfg.ddim_steps and s.t0 == cfg.t0
    assert cfg.n_per_identity >= 2 and cfg.n_identities >= 2


def test_generator_config_rejects_inconsistent_sizes():
    with pytest.raises(ParameterError):
        GeneratorConfig(channels=(8, 16), attn_levels=(False, True, True))
    with pytest.raises(ParameterError):
        GeneratorConfig(image_size=30, channels=(8, 16, 16), attn_levels=(False, True, True))


def test_paper_profile_names_missing_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_DATA", str(tmp_path))
    cfg = profiles.resolve("02_uiface", "paper")
    with pytest.raises(DataError, match="uiface_unet.ckpt"):
        P.require_paper_files(cfg)
    for rel in (cfg.generator_checkpoint, cfg.autoencoder_checkpoint):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert len(P.require_paper_files(cfg)) == 2


def test_real_row_matches_the_synthetic_shape():
    from facestudy.data import FaceSet

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), [5, 1, 4, 6, 2, 5])
    fs = FaceSet(images=rng.integers(0, 255, (len(labels), 112, 112, 3), dtype=np.uint8), labels=labels,
                 meta=None, name="toy")
    td = P.TrainingData(faceset=fs, images=None, identity=None, source="toy")
    real = P.real_fr_set(td, n_identities=3, n_per_identity=4, size=32, seed=0)
    assert real.images.shape == (12, 32, 32, 3) and real.n_identities == 3
    assert np.bincount(real.labels).tolist() == [4, 4, 4]


def test_choose_guidance_takes_the_smallest_w_that_reaches_the_target():
    assert P.choose_guidance({1.0: 0.80, 2.0: 0.88, 4.0: 0.93, 8.0: 0.95}, 0.9) == 4.0
    assert P.choose_guidance({8.0: 0.95, 4.0: 0.91, 1.0: 0.5}, 0.9) == 4.0  # order of the dict does not matter
    assert P.choose_guidance({1.0: 0.80, 2.0: 0.86, 4.0: 0.85}, 0.9) == 2.0  # none reaches it: the best AUC
    assert P.choose_guidance({1.0: 0.7, 2.0: 0.7}, 0.9) == 1.0  # a tie: the smaller w
    assert P.choose_guidance({1.0: float("nan"), 2.0: 0.6}, 0.9) == 2.0
    assert P.choose_guidance({2.0: float("nan"), 1.0: float("nan")}, 0.9) == 1.0
    with pytest.raises(ValueError):
        P.choose_guidance({}, 0.9)


def test_tune_guidance_samples_every_w_on_tuning_people_and_keeps_a_fixed_w(monkeypatch):
    import torch

    from test_uiface_latent import tiny_ae, tiny_latent_generator

    cfg = profiles.resolve("02_uiface", "smoke", ddim_steps=3, embed_dim=6)
    assert profiles.resolve("02_uiface", "paper").guidance == 1.0  # the paper's w is fixed, never tuned
    ae = tiny_ae()
    ae.scale.fill_(1.0)
    gen = tiny_latent_generator().attach_autoencoder(ae)

    class FR:  # the real FR model's role: embeddings of the drawn images
        def embed(self, images):
            x = torch.as_tensor(np.asarray(images), dtype=torch.float32).flatten(1)[:, :6]
            return torch.nn.functional.normalize(x - x.mean(0), dim=1)

    ctx = torch.nn.functional.normalize(torch.randn(3, 6), dim=1)
    ref = torch.nn.functional.normalize(torch.randn(12, 6), dim=1)
    monkeypatch.setattr(P, "tuning_contexts",
                        lambda fr, n, size, seed=0: {"contexts": ctx, "reference": ref, "who": "toy (3 people)"})
    out = P.tune_guidance(gen, FR(), cfg, "cpu", seed=0)
    assert list(out["table"]["w"]) == cfg.guidance_grid and out["w"] in cfg.guidance_grid
    assert out["w"] == P.choose_guidance(dict(zip(out["table"]["w"], out["table"]["auc"], strict=True)), cfg.gate_auc)
    assert "toy" in out["source"] and out["table"]["rank1"].between(0, 1).all()
    assert (out["table"]["fd"] >= 0).all() and "faces" in out["table"]
    monkeypatch.setattr(P, "tuning_contexts", lambda fr, n, size, seed=0: None)  # no LFW: the grid's first value
    assert P.tune_guidance(gen, FR(), cfg, "cpu")["w"] == cfg.guidance_grid[0]
    cfg.guidance = 3.0
    fixed = P.tune_guidance(gen, FR(), cfg, "cpu")
    assert fixed["w"] == 3.0 and fixed["table"].empty
    cfg.guidance, cfg.guidance_grid = -1.0, [-1.0]
    with pytest.raises(ParameterError, match="guidance_grid"):
        P.tune_guidance(gen, FR(), cfg, "cpu")


def test_face_probability_tells_a_real_face_from_a_flat_image():
    from facestudy import data

    if not (data.available("mtcnn") and data.available("lfw")):
        pytest.skip("MTCNN weights or LFW absent")
    real = P.lowres(data.load("lfw", limit=8, seed=0), 32).images
    flat = np.full((2, 32, 32, 3), 128, dtype=np.uint8)
    p_real, p_flat = P.face_probability(real), P.face_probability(flat)
    assert p_real.shape == (len(real),) and p_flat.shape == (2,)
    assert np.median(p_real) > 0.5 > p_flat.max()


def test_context_scores_on_known_geometry():
    """Three orthogonal contexts; rows 0-1 sit on their own context, row 2 sits nearer to another one."""
    import torch

    ctx = torch.eye(3)
    emb = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0, 0.8]])
    sc = P.context_scores(emb, ctx, np.array([0, 1, 0]))
    np.testing.assert_allclose(sc["own"], [1.0, 1.0, 0.6])
    np.testing.assert_allclose(sc["other"], [0.0, 0.0, 0.4])  # (0 + 0.8) / 2
    assert sc["rank1"] == pytest.approx(2 / 3)
