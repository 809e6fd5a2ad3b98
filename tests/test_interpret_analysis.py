"""Chapter 4 (FaceMINT) analysis tests: AUROC scores, labels, dataset search, overlays, grid search."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from facestudy.errors import ParameterError
from facestudy.interpret import analysis, overlays


def test_auroc_matrix_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(float)
    codes = np.stack([y + rng.normal(0, 1, 200), np.where(rng.random(200) < 0.7, 0.0, rng.random(200)),
                      -y], 1)
    labels = pd.DataFrame({"attr": y})
    auc = analysis.auroc_matrix(codes, labels)
    for j in range(3):
        assert auc["attr"].iloc[j] == pytest.approx(roc_auc_score(y, codes[:, j]))
    best = analysis.best_matches(auc)
    assert best.loc["attr", "unit"] == 2 and best.loc["attr", "score"] == pytest.approx(1.0)


def test_auroc_skips_rare_and_unknown_labels():
    labels = pd.DataFrame({"rare": [1.0] + [0.0] * 49, "half_known": [np.nan] * 25 + [1.0, 0.0] * 12 + [1.0]})
    auc = analysis.auroc_matrix(torch.randn(50, 4), labels, min_positives=5)
    assert list(auc.columns) == ["half_known"]
    with pytest.raises(ParameterError):
        analysis.auroc_matrix(torch.randn(10, 2), labels)


def test_label_table_celeba_utk_and_synthetic():
    celeb = pd.DataFrame({"Eyeglasses": [1, -1, -1], "Male": [-1, 1, 1]})
    lt = analysis.label_table(celeb)
    assert lt["Eyeglasses"].tolist() == [1.0, 0.0, 0.0]
    utk = pd.DataFrame({"age": [1, 30, 70], "gender": [0, 1, 0], "race": [2, 0, 4]})
    lu = analysis.label_table(utk)
    assert lu["age_0-2_infant"].tolist() == [1.0, 0.0, 0.0] and lu["female"].tolist() == [0.0, 1.0, 0.0]
    assert lu["race_Asian"].tolist() == [1.0, 0.0, 0.0]
    both = pd.concat([celeb, utk], ignore_index=True)
    lb = analysis.label_table(both)
    assert np.isnan(lb["Eyeglasses"].iloc[4]) and np.isnan(lb["female"].iloc[0])
    syn = analysis.label_table(pd.DataFrame({"eyeglasses": [0.0, 1.0], "age": [0.2, 0.9]}))
    assert syn["syn_eyeglasses"].tolist() == [0.0, 1.0]


def test_top_bottom_and_contrastive_sets():
    codes = torch.zeros(30, 2)
    codes[:5, 1] = torch.arange(5, 0, -1).float()
    top, bottom = analysis.top_bottom(codes, 1, n=3)
    assert top.tolist() == [0, 1, 2] and all(b >= 5 for b in bottom)
    labels = pd.DataFrame({"a": [1.0] * 5 + [0.0] * 25})
    ident = [f"id{i % 3}" for i in range(30)]
    c = analysis.contrastive_sets(codes, 1, labels, ident, n=5)
    assert c.loc["a", "max"] == 1.0 and c.loc["a", "min"] == 0.0
    assert c.loc["distinct identities", "max"] == 3


def test_grid_search_table_and_densities():
    x = torch.nn.functional.normalize(torch.randn(256, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    table, trained = analysis.grid_search(x, [("topk", {"k": 2}), ("vanilla", {"l1_coeff": 1.0})], steps=5,
                                          batch_size=64, expansion=2)
    assert list(table["name"]) == ["topk k=2", "vanilla l1=1"] and set(trained) == set(table["name"])
    assert table.loc[0, "L0"] == pytest.approx(2.0)
    dens = analysis.densities({"t": torch.tensor([[1.0, 0.0], [1.0, 2.0]])})
    assert dens["t"].tolist() == [1.0, 0.5]


def test_overlays_change_only_the_face_region():
    img = np.full((2, 112, 112, 3), 200, np.uint8)
    lmk = np.tile(np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]], np.float32),
                  (2, 1, 1))
    masked = overlays.add_mask(img, lmk)
    changed = (masked != img).any(-1)[0]
    ys, xs = np.nonzero(changed)
    assert changed.mean() > 0.1 and ys.min() > 55 and xs.min() > 5  # lower face only
    glasses = overlays.add_sunglasses(img, lmk)
    g = (glasses != img).any(-1)[0]
    assert g[52, 38] and g[52, 74] and not g[100, 56]
    with pytest.raises(ParameterError):
        overlays.add_mask(img, lmk[:1])


def test_layer_tokens_units_and_pooling_keep_faces_and_positions_apart():
    """Tokens are face-major and row-major; a unit's map puts each position's code back in its place; the
    pooled code is the unit's maximum over one face's positions only (never mixing faces)."""
    rng = torch.Generator().manual_seed(0)
    f = torch.randn(5, 3, 2, 4, generator=rng)
    tok = analysis.layer_tokens(f.half())
    assert tok.shape == (5 * 8, 3) and tok.dtype == torch.float32
    assert torch.allclose(tok[1 * 8 + 1 * 4 + 2], f[1, :, 1, 2].half().float())  # face 1, row 1, column 2
    w = torch.randn(3, 6, generator=rng)
    enc = lambda t: torch.relu(t @ w)  # noqa: E731 - a stand-in encoder with 6 units
    maps = analysis.unit_maps(enc, f, batch_faces=2)
    assert maps.shape == (5, 6, 2, 4)
    assert torch.allclose(maps[3, :, 0, 1], enc(f[3, :, 0, 1][None])[0])
    pooled = analysis.pooled_codes(enc, f, batch_faces=3)
    want = torch.stack([enc(f[i].reshape(3, -1).T).amax(0) for i in range(5)])
    assert torch.allclose(pooled, want)
    with pytest.raises(ParameterError):
        analysis.layer_tokens(torch.zeros(4, 3))


def test_untrained_like_keeps_family_settings_and_scaling_but_not_the_learned_dictionary():
    from facestudy.interpret import saes

    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    trained = saes.train_sae(saes.create("topk", d_in=16, seed=0, expansion=2, k=4), x, steps=5, batch_size=32).sae
    ctl = analysis.untrained_like(trained, x, seed=7)
    assert type(ctl) is type(trained) and ctl.n_latents == trained.n_latents
    assert ctl.config.as_dict() == {**trained.config.as_dict(), "seed": 7}
    assert torch.equal(ctl.input_scale, trained.input_scale)
    assert not torch.allclose(ctl.W_enc, trained.W_enc)  # a fresh dictionary, not the learned one
    again = analysis.untrained_like(trained, x, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(ctl.state_dict().values(), again.state_dict().values(), strict=True))
