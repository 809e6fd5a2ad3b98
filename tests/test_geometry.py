"""Unit tests of facestudy.geometry (chapter 1): KS protocol, sampler, entropies, probes, energy, image ops."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from facestudy.errors import ParameterError
from facestudy.geometry import claims, energy, entropy, imageops, lattices, macroscale, probes


# ------------------------------------------------------------------------------------ macroscale
def test_ks_identical_samples_is_zero():
    x = np.random.default_rng(0).normal(size=300)
    stat, p = macroscale.ks_statistic(x, x.copy())
    assert stat == 0.0
    assert p == pytest.approx(1.0)


def test_ks_detects_shift():
    rng = np.random.default_rng(1)
    stat, p = macroscale.ks_statistic(rng.normal(size=500), rng.normal(1.0, size=500))
    assert stat > 0.3 and p < 1e-6


def _toy_population(n_ids=120, per_id=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_ids), per_id)
    attr = np.where(rng.random(len(labels)) < 0.5, 1, -1)
    return labels, attr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampler_one_image_per_identity_per_modality(seed):
    labels, attr = _toy_population(seed=seed)
    labels[:7] = -1  # unknown identities are never sampled
    xp, xm = macroscale.modality_samples(labels, attr, n_max=500, seed=seed)
    assert len(xp) == len(xm) > 50
    assert len(np.unique(labels[xp])) == len(xp)
    assert len(np.unique(labels[xm])) == len(xm)
    assert (attr[xp] > 0).all() and (attr[xm] < 0).all()
    assert (labels[xp] >= 0).all() and (labels[xm] >= 0).all()
    xp2, _ = macroscale.modality_samples(labels, attr, n_max=20, seed=seed)
    assert len(xp2) == 20


def test_distance_lists_sizes_and_metrics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    wp, wm, cr = macroscale.distance_lists(a, b, "cosine")
    assert len(wp) == 15 and len(wm) == 15 and len(cr) == 36
    d = macroscale.pairwise_distances(a[:1], b[:1], "euclidean")[0, 0]
    assert d == pytest.approx(np.linalg.norm(a[0] - b[0]))
    with pytest.raises(ParameterError):
        macroscale.pairwise_distances(a, b, "manhattan")


def test_macroscale_ks_finds_the_shaping_attribute():
    rng = np.random.default_rng(0)
    n_ids, per = 200, 3
    labels = np.repeat(np.arange(n_ids), per)
    shaping = np.where(rng.random(len(labels)) < 0.5, 1, -1)
    neutral = np.where(rng.random(len(labels)) < 0.5, 1, -1)
    emb = rng.normal(size=(len(labels), 16))
    emb[:, 0] += 3.0 * shaping  # the attribute moves every embedding along one axis
    attrs = pd.DataFrame({"shaping": shaping, "neutral": neutral})
    df = macroscale.macroscale_ks(emb, labels, attrs, n_max=100, n_boot=20, seed=0).set_index("attribute")
    assert df.loc["shaping", "ks_max"] > 0.3 > df.loc["neutral", "ks_max"]
    assert df.loc["shaping", "significant"] and not df.loc["neutral", "significant"]
    assert df.loc["shaping", "ci_max_low"] > 0.2 and df.loc["neutral", "ci_max_low"] < 0.1
    assert df.loc["shaping", "ci_max_low"] <= df.loc["shaping", "ks_max"] <= df.loc["shaping", "ci_max_high"]
    again = macroscale.macroscale_ks(emb, labels, attrs, n_max=100, n_boot=20, seed=0).set_index("attribute")
    pd.testing.assert_frame_equal(df, again)


def test_weighted_ks_matches_scipy_on_unit_weights():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=200), rng.normal(0.3, size=300)
    wks = macroscale._WeightedKS(x, y)
    assert wks(np.ones(200), np.ones(300)) == pytest.approx(macroscale.ks_statistic(x, y)[0])
    # integer weights are the same as repeating the values
    wx = rng.integers(0, 3, 200).astype(float)
    ref = macroscale.ks_statistic(np.repeat(x, wx.astype(int)), y)[0]
    assert wks(wx, np.ones(300)) == pytest.approx(ref)


def test_adjust_pvalues_holm_and_bh():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    holm = macroscale.adjust_pvalues(p, "holm")
    assert holm[0] == pytest.approx(0.04) and np.isnan(holm[3])
    assert holm[2] == pytest.approx(0.09) and holm[1] == pytest.approx(0.09)
    bh = macroscale.adjust_pvalues(p, "bh")
    assert bh[0] == pytest.approx(0.04) and bh[2] == pytest.approx(0.04 * 4 / 3) and bh[4] == pytest.approx(0.5)
    assert (bh[~np.isnan(bh)] <= holm[~np.isnan(holm)] + 1e-12).all()


def test_aggregates():
    df = pd.DataFrame({"stat_pos": [0.2], "stat_neg": [0.4], "count_pos": [1], "count_neg": [3]})
    agg = macroscale.aggregate(df)
    assert agg["ks_max"][0] == 0.4 and agg["ks_mean"][0] == pytest.approx(0.3)
    assert agg["ks_weighted"][0] == pytest.approx((0.2 + 3 * 0.4) / 4)


# ------------------------------------------------------------------------------------ entropy, probes
def test_entropies():
    labels = np.array([0, 0, 1, 1, 2, 2])
    const = np.array([1, 1, -1, -1, 1, 1])
    mixed = np.array([1, -1, 1, -1, 1, -1])
    assert entropy.intra_entropy(labels, const) == 0.0
    assert entropy.intra_entropy(labels, mixed) == pytest.approx(np.log(2))
    # every identity at mean 0 gives a single narrow KDE bump: lower entropy than means spread over +-1
    spread = entropy.inter_entropy(np.arange(6), np.array([1, -1, 1, -1, 1, -1]))
    peaked = entropy.inter_entropy(labels, mixed)
    assert spread > peaked


def test_spearman_and_ranking_agreement():
    ks = pd.DataFrame({"attribute": list("abcde"), "ks_max": [.1, .2, .3, .4, .5], "ks_mean": [.1, .2, .3, .4, .5],
                       "ks_weighted": [.5, .4, .3, .2, .1]})
    ent = pd.DataFrame({"attribute": list("abcde"), "intra_entropy": [1, 2, 3, 4, 5],
                        "inter_entropy": [5, 4, 3, 2, 1]})
    t = entropy.spearman_table(ks, ent).set_index(["aggregate", "entropy"])
    assert t.loc[("ks_max", "intra_entropy"), "rho"] == pytest.approx(1.0)
    assert t.loc[("ks_weighted", "intra_entropy"), "rho"] == pytest.approx(-1.0)
    agree = entropy.ranking_agreement(ks.set_index("attribute")[["ks_max", "ks_weighted"]])
    assert agree.loc["ks_max", "ks_weighted"] == pytest.approx(-1.0)


def test_probes_read_a_linear_attribute():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(60), 3)
    y = np.where(rng.random(len(labels)) < 0.5, 1, -1)
    x = rng.normal(size=(len(labels), 8))
    x[:, 0] += 2.5 * y
    noise = np.where(rng.random(len(labels)) < 0.5, 1, -1)
    out = probes.attribute_probes(x, pd.DataFrame({"lin": y, "noise": noise}), labels=labels).set_index("attribute")
    assert out.loc["lin", "balanced_accuracy"] > 0.9
    assert 0.3 < out.loc["noise", "balanced_accuracy"] < 0.7


# ------------------------------------------------------------------------------------ energy
def test_energy_aligned_field_is_zero():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 32))
    v = np.tile(rng.normal(size=32), (50, 1)) * rng.uniform(0.5, 2.0, size=(50, 1))
    for nb in ("knn", "ball", "idw"):
        e = energy.curve_energies(pts, v, neighbourhood=nb, eps=1.0)
        assert np.nanmax(np.abs(e)) < 1e-9, nb
    curves = np.stack([pts - v / 2, pts, pts + v / 2], axis=1)
    assert energy.invariance_energy(curves) == pytest.approx(0.0, abs=1e-9)


def test_energy_random_directions_is_about_one():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(400, 128))
    v = rng.normal(size=(400, 128))
    for nb in ("knn", "ball", "idw"):
        e = np.nanmean(energy.curve_energies(pts, v, neighbourhood=nb, eps=1.0))
        assert abs(e - 1.0) < 0.05, (nb, e)


def test_energy_knn_excludes_self_and_caps_k():
    pts = np.array([[0.0, 1.0], [0.0, 1.1], [1.0, 0.0]])
    v = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    e = energy.curve_energies(pts, v, k=1)
    assert e[0] == 0.0 and e[1] == 0.0 and e[2] == pytest.approx(2.0)
    assert np.isfinite(energy.curve_energies(pts, v, k=10)).all()
    with pytest.raises(ParameterError):
        energy.curve_energies(pts, v, neighbourhood="ring")


def test_energy_table_and_mannwhitney():
    rng = np.random.default_rng(2)
    rows, embs = [], []
    for ident in range(6):
        for attr, aligned in (("coherent", True), ("random", False)):
            d = rng.normal(size=16)
            for c in range(15):
                x = rng.normal(size=16)
                v = d if aligned else rng.normal(size=16)
                for s in range(3):
                    rows.append({"identity": ident, "attribute": attr, "curve": c, "step": s, "row": len(embs)})
                    embs.append(x + (s - 1) * 0.1 * v)
    t = energy.energy_table(np.array(embs), pd.DataFrame(rows), k=5)
    assert len(t) == 12
    med = t.groupby("attribute")["energy"].median()
    assert med["coherent"] < 0.05 and med["random"] > 0.7
    # move: 1 - cos(step 0, step 2); here |x| ~ 4 and the steps +-0.1 v, so both attributes move a little
    x0, x2 = np.array(embs[0]), np.array(embs[2])
    first = t.query("identity == 0 and attribute == 'coherent'")["move"].iloc[0]
    assert 0 < first < 0.1 and t["move"].between(0, 2).all()
    one = energy.energy_table(np.array(embs), pd.DataFrame(rows).query("identity == 0 and attribute == 'coherent' "
                                                                      "and curve in (0, 1)"), k=1)
    x1, y1 = np.array(embs[3]), np.array(embs[5])
    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    want = np.mean([1 - cos(x0, x2), 1 - cos(x1, y1)])
    assert abs(one["move"].iloc[0] - want) < 1e-12
    mw = energy.mannwhitney_table(t)
    assert len(mw) == 1 and mw["p"][0] < 0.01


# ------------------------------------------------------------------------------------ image ops, lattices
def _faces(n=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_image_ops_neutral_is_identity_and_ops_act():
    x = _faces()
    for op in imageops.OPS:
        y = imageops.apply(x, op, 0.0)
        assert y.dtype == np.uint8 and y.shape == x.shape
        assert np.abs(y.astype(int) - x).max() <= 1, op
        lo, hi, step = imageops.RANGES[op]
        z = imageops.apply(x, op, hi)
        assert np.abs(z.astype(int) - x).mean() > 2, op
    b = imageops.apply(x, "brightness", [0.1, -0.1])
    assert b[0].mean() > x[0].mean() and b[1].mean() < x[1].mean()
    with pytest.raises(ParameterError):
        imageops.apply(x, "sharpen", 1.0)
    with pytest.raises(ParameterError):
        imageops.apply(x.astype(np.float32), "hue", 0.1)


def test_illumination_relights_one_side_not_the_whole_face():
    """A lamp moved to the right keeps the right cheek lit and darkens the left one (Lambertian: the lit side
    was already lit from the front); the frontal light is neutral; the opposite azimuth mirrors it (unlike
    brightness, which moves every pixel alike)."""
    x = np.full((1, 112, 112, 3), 128, np.uint8)
    right = imageops.apply(x, "illumination", 45.0)[0].astype(float)
    left = imageops.apply(x, "illumination", -45.0)[0].astype(float)
    cols = slice(30, 50), slice(62, 82)  # cheeks: left and right of the face centre
    assert right[40:80, cols[1]].mean() >= 128 and right[40:80, cols[0]].mean() < 128 - 30
    assert np.abs(right - left[:, ::-1]).max() <= 1  # mirror symmetry of the face ellipse
    assert np.array_equal(imageops.apply(x, "illumination", 0.0), x)
    assert "illumination" in claims.PAPER_HIGH_LEVEL  # the paper's high-level attribute a photo allows


def test_image_op_curves_structure():
    x = _faces(4)
    ids = np.array([0, 0, 1, 1])
    imgs, table = lattices.image_op_curves(x, ids, ("brightness", "roll"), n_curves=3, seed=0)
    assert len(imgs) == len(table) == 2 * 2 * 3 * 3
    g = table.groupby(["identity", "attribute", "curve"])
    assert (g["source"].nunique() == 1).all()
    steps = table.pivot_table(index=["identity", "attribute", "curve"], columns="step", values="value")
    assert np.allclose(steps[2] - steps[1], steps[1] - steps[0])
    for ident in (0, 1):
        assert set(table.loc[table.identity == ident, "source"]) <= set(np.flatnonzero(ids == ident))
    imgs2, table2 = lattices.image_op_curves(x, ids, ("brightness", "roll"), n_curves=3, seed=0)
    assert np.array_equal(imgs, imgs2)


def test_synthetic_curves_cache_round_trip(tmp_path, monkeypatch):
    """A warm lattice cache loads back (text columns must not need pickle) and equals the fresh render."""
    from facestudy.geometry import world

    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    images, table = world.synthetic_curves(1, ("yaw", "eyeglasses"), n_curves=2, size=32, seed=3)
    assert list((tmp_path / "geometry" / "lattices").glob("world-*.npz"))
    images2, table2 = world.synthetic_curves(1, ("yaw", "eyeglasses"), n_curves=2, size=32, seed=3)
    assert np.array_equal(images, images2)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), table2.reset_index(drop=True), check_dtype=False)
