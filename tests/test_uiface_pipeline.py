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
