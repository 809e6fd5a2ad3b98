"""Chapter 2 (UIFace) latent diffusion: the project's f4 autoencoder, the latent generator, the gate's metrics."""
import numpy as np
import pytest
import torch

from facestudy.errors import DataError, ParameterError
from facestudy.uiface import GeneratorConfig, SamplerConfig, UIFaceGenerator, sample, train_diffusion
from facestudy.uiface import pipeline as P
from facestudy.uiface.autoencoder import AutoencoderConfig, FaceAutoencoder, train_autoencoder


def tiny_ae(z: int = 4) -> FaceAutoencoder:
    torch.manual_seed(0)
    return FaceAutoencoder(AutoencoderConfig(image_size=16, latent_channels=z, channels=(8, 8), norm_groups=4))


def tiny_latent_generator(z: int = 4) -> UIFaceGenerator:
    torch.manual_seed(0)
    return UIFaceGenerator(GeneratorConfig(image_size=16, embed_dim=6, context_dim=8, n_tokens=2, token_dim=8,
                                           channels=(8, 8), attn_levels=(True, True), head_dim=4, norm_groups=4,
                                           prediction="v_prediction", latent_channels=z))


def test_autoencoder_is_f4_and_scales_latents_to_unit_variance():
    ae = tiny_ae()
    imgs = torch.rand(40, 3, 16, 16) * 2 - 1
    train_autoencoder(ae, imgs, steps=3, batch_size=8, seed=0)
    z = ae.encode_all(imgs)
    assert z.shape == (40, 4, 4, 4)
    assert abs(float(z.std()) - 1.0) < 0.05  # the scale was fitted on (a sample of) these very images
    rec = ae.decode_all(z)
    assert rec.shape == imgs.shape and float(rec.abs().max()) <= 1.0
    with pytest.raises(ParameterError, match="latents"):
        ae.decode(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ParameterError, match="input images"):
        ae.encode(torch.zeros(2, 3, 12, 12))


def test_autoencoder_learns_and_resumes_exactly(tmp_path):
    imgs = torch.rand(24, 3, 16, 16) * 2 - 1
    a = tiny_ae()
    ha = train_autoencoder(a, imgs, steps=30, batch_size=8, seed=3, lr=3e-3)
    assert np.mean(ha.loss[-5:]) < np.mean(ha.loss[:5])  # it fits
    hn = train_autoencoder(tiny_ae(), imgs, steps=30, batch_size=8, seed=3, lr=3e-3, latent_noise=0.3)
    assert np.mean(hn.loss[-5:]) < np.mean(hn.loss[:5]) and hn.loss[0] != ha.loss[0]  # noisy decoding trains too
    ck = tmp_path / "ae.pt"
    train_autoencoder(tiny_ae(), imgs, steps=12, batch_size=8, seed=3, lr=3e-3, checkpoint=ck, checkpoint_every=4)
    c = FaceAutoencoder(a.config)  # other initial weights: all must come from the checkpoint
    hc = train_autoencoder(c, imgs, steps=12, batch_size=8, seed=3, lr=3e-3, checkpoint=ck)
    assert hc.resumed_from == 12 and hc.steps == 12 and hc.total_seconds > 0
    b = tiny_ae()
    hb = train_autoencoder(b, imgs, steps=12, batch_size=8, seed=3, lr=3e-3)
    assert np.allclose(hb.loss, hc.loss)
    for (k, vb), vc in zip(b.state_dict().items(), c.state_dict().values(), strict=True):
        assert torch.allclose(vb, vc), k
    other = FaceAutoencoder(AutoencoderConfig(image_size=16, latent_channels=2, channels=(8, 8), norm_groups=4))
    with pytest.raises(DataError, match="another config"):
        train_autoencoder(other, imgs, steps=12, batch_size=8, checkpoint=ck)


def test_autoencoder_config_is_checked():
    with pytest.raises(ParameterError, match="multiple of 4"):
        AutoencoderConfig(image_size=30)
    with pytest.raises(ParameterError, match="divisible by norm_groups"):
        AutoencoderConfig(channels=(12, 16), norm_groups=8)
    with pytest.raises(ParameterError, match="latent_channels"):
        AutoencoderConfig(latent_channels=0)


def test_latent_generator_trains_on_latents_and_samples_images():
    ae = tiny_ae()
    imgs = torch.rand(12, 3, 16, 16) * 2 - 1
    train_autoencoder(ae, imgs, steps=2, batch_size=4)
    gen = tiny_latent_generator()
    assert gen.config.sample_size == 4 and gen.config.sample_channels == 4
    with pytest.raises(ParameterError, match="latents of shape"):
        train_diffusion(gen, imgs, torch.randn(12, 6), steps=1, batch_size=4)
    ema, _ = train_diffusion(gen, ae.encode_all(imgs), torch.randn(12, 6), steps=2, batch_size=4)
    with pytest.raises(ParameterError, match="autoencoder attached"):
        sample(ema.model, torch.randn(2, 6), SamplerConfig(steps=2))
    with pytest.raises(ParameterError, match="expects"):
        ema.model.attach_autoencoder(tiny_ae(z=2))
    ema.model.attach_autoencoder(ae)
    res = sample(ema.model, torch.randn(3, 6), SamplerConfig(steps=3, mode="adaptive"), seed=1, keep_maps=1)
    assert res.images.shape == (3, 16, 16, 3) and res.images.dtype == torch.uint8
    assert res.maps.shape[-1] == 16  # attention maps are drawn at the image's size
    with pytest.raises(ParameterError, match="pixel space"):
        UIFaceGenerator(GeneratorConfig(image_size=16, channels=(8, 8), attn_levels=(True, True), head_dim=4,
                                        norm_groups=4, token_dim=8)).attach_autoencoder(ae)


def test_generator_config_checks_the_latent_side():
    with pytest.raises(ParameterError, match="divisible by 4"):
        GeneratorConfig(image_size=18, latent_channels=4, channels=(8, 8), attn_levels=(True, True))
    with pytest.raises(ParameterError, match="input side 4"):
        GeneratorConfig(image_size=16, latent_channels=4, channels=(8, 8, 8, 8), attn_levels=(True,) * 4)


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert P.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean shifted by (1, 2, 2): FD = |Δμ|² = 9
    assert P.frechet_distance(a, a + np.array([1.0, 2.0, 2.0])) == pytest.approx(9.0, abs=1e-6)
    # N(0, I) vs N(0, 4I) in 3-d: tr(I) + tr(4I) - 2 tr(2I) = 3
    b = rng.normal(size=(200_000, 3)) * 2
    c = rng.normal(size=(200_000, 3))
    assert P.frechet_distance(c, b) == pytest.approx(3.0, abs=0.1)
    with pytest.raises(ValueError):
        P.frechet_distance(a[:, :2], a)


def test_verification_auc_on_constructed_embeddings():
    e = torch.tensor([[1.0, 0], [0.99, 0.14], [0, 1.0], [0.14, 0.99]])
    e = torch.nn.functional.normalize(e, dim=1)
    assert P.verification_auc(e, [0, 0, 1, 1]) == 1.0
    assert P.verification_auc(e, [0, 1, 0, 1]) < 0.5
    assert np.isnan(P.verification_auc(e, [0, 0, 0, 0]))


def test_train_stage_trains_once_and_the_chapter_loads_it(tmp_path, monkeypatch, capsys):
    """`facestudy train 02_uiface generator` (make book's cold stage) leaves both checkpoints in the cache;
    the chapter's own call with the same settings then loads them without training a step."""
    from facestudy import cli, profiles

    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path / "cache"))
    over = ["train_sets=[]", "train_images=24", "ae_steps=3", "train_steps=3"]  # the synthetic world: no data
    argv = ["train", "02_uiface", "generator", "--profile", "smoke", "--quiet"]
    for o in over:
        argv += ["--set", o]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "autoencoder" in out and "generator" in out and "loads it instead of training" in out
    files = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "uiface").glob("*.pt"))
    assert files == ["autoencoder", "generator"]
    cfg = profiles.resolve("02_uiface", "smoke", train_sets=[], train_images=24, ae_steps=3, train_steps=3)
    t = P.prepare_generator(cfg, progress=False)
    assert t.hist.resumed_from == 3 and t.ae_hist.resumed_from == 3 and t.cold_seconds < 1.0
    assert t.model.autoencoder is t.ae and t.hist.total_seconds > 0


def test_threshold_is_calibrated_on_our_own_map_changes():
    from facestudy import profiles

    cfg = profiles.resolve("02_uiface", "smoke", ddim_steps=8, embed_dim=6, guidance=1.0)
    assert cfg.th < 0 and profiles.resolve("02_uiface", "paper").th == 0.005
    ae = tiny_ae()
    ae.scale.fill_(1.0)
    gen = tiny_latent_generator().attach_autoencoder(ae)
    with pytest.raises(ParameterError, match="calibrate"):
        sample(gen, torch.randn(2, 6), P.sampler(cfg, mode="adaptive"))
    cal = P.calibrate_threshold(gen, cfg, "cpu", n=6)
    ts = np.asarray(cal["timesteps"])
    used = cal["d"][:, (ts >= cfg.t0) & (np.arange(len(ts)) >= 2)]
    assert cal["th"] == pytest.approx(np.quantile(used[np.isfinite(used)], cfg.th_quantile))
    cfg.th = cal["th"]
    res = sample(gen, torch.randn(4, 6), P.sampler(cfg, mode="adaptive"), seed=2)
    assert ((res.t0 >= cfg.t0) & (res.t0 <= 1000)).all()


def test_glue_stores_numpy_scalars_as_python_numbers(monkeypatch):
    """A glued np.float64 once broke the -W book build ('could not convert string to float: np.float64(...)')."""
    import myst_nb

    from facestudy import report

    seen = {}
    monkeypatch.setattr(report, "_in_kernel", lambda: True)
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=False: seen.update({name: value}))
    assert report.glue("acc", np.float64(0.575)) == 0.575
    assert type(seen["acc"]) is float and type(report.glue("n", np.int64(3))) is int


def test_held_out_identities_are_held_out_of_every_training_set(monkeypatch):
    """The gate's identities must be unseen: CelebA-id299 people also appear in CelebA-10k under the same
    CelebA identity number, so they are removed there too."""
    import pandas as pd

    from facestudy import data, profiles
    from facestudy import eval as fseval
    from facestudy.data import FaceSet

    def toy(name, ids):
        ids = np.asarray(ids)
        _, labels = np.unique(ids, return_inverse=True)
        return FaceSet(images=np.zeros((len(ids), 112, 112, 3), np.uint8), labels=labels,
                       meta=pd.DataFrame({"identity": ids.astype(str)}), name=name)

    sets = {"celeba_id299": toy("celeba_id299", [1, 1, 2, 2, 3, 3, 4, 4]),
            "celeba10k": toy("celeba10k", [1, 2, 3, 4, 5, 6, 7])}
    monkeypatch.setattr(data, "available", lambda name: name in sets)
    monkeypatch.setattr(data, "load", lambda name, limit=None: sets[name])
    monkeypatch.setattr(fseval, "embed_cached", lambda fr, fs: torch.randn(len(fs), 4))
    cfg = profiles.resolve("02_uiface", "smoke", train_sets=["celeba_id299", "celeba10k"], gate_identities=2,
                           train_per_identity=0, train_images=0, train_limit=0)
    td = P.training_data(cfg, fr=None, seed=0)
    out = set(td.heldout.meta["identity"])
    assert len(out) == 2 and td.heldout.n_identities == 2 and len(td.heldout) == 4
    seen = set(td.faceset.meta["identity"])
    assert not (out & seen) and seen == {"1", "2", "3", "4", "5", "6", "7"} - out
    assert len(td.faceset) == 4 + 5 and td.identity.shape == (9, 4)
