"""Chapter 4 v2 (FaceMINT): identity splits, border control, validated alignment, density shape,
frontier interpolation, dead-latent resampling and JumpReLU threshold learning (all fast)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from facestudy.errors import ParameterError
from facestudy.interpret import analysis, saes


def test_identity_groups_unknown_is_not_one_identity():
    meta = pd.DataFrame({"dataset": ["utkface"] * 3 + ["lfw"] * 2 + ["celeba10k"],
                         "identity": ["unknown"] * 3 + ["A", "A", "A"]})
    g = analysis.identity_groups(meta)
    assert len(set(g[:3])) == 3  # three UTK images, three groups
    assert g[3] == g[4] and g[3] != g[5]  # same name in two datasets is not the same group
    celeb = pd.DataFrame({"dataset": ["celeba10k", "celeba_id299"], "identity": ["7201", "7201"]})
    g2 = analysis.identity_groups(celeb)
    assert g2[0] == g2[1]  # both CelebA sets use CelebA's identity numbers: the same person


def test_group_split_is_disjoint_sized_and_seeded():
    groups = np.repeat(np.arange(200), np.random.default_rng(0).integers(1, 6, 200))
    parts = analysis.group_split(groups, {"train": 0.6, "disc": 0.2, "val": 0.2}, seed=1)
    allidx = np.concatenate(list(parts.values()))
    assert sorted(allidx.tolist()) == list(range(len(groups)))
    sets = {k: set(groups[v]) for k, v in parts.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["disc"] & sets["val"]) and not (sets["train"] & sets["disc"])
    assert abs(len(parts["train"]) / len(groups) - 0.6) < 0.05
    again = analysis.group_split(groups, {"train": 0.6, "disc": 0.2, "val": 0.2}, seed=1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    with pytest.raises(ParameterError):
        analysis.group_split(groups, {})


def test_border_fraction_sees_black_padding_only():
    img = np.full((2, 32, 32, 3), 120, np.uint8)
    img[1, :, :6] = 0  # a black band on the left of the second image
    b = analysis.border_fraction(img, frame=4)
    assert b[0] == 0 and 0.2 < b[1] < 0.5


def test_validated_alignment_chooses_on_discovery_and_scores_on_validation():
    rng = np.random.default_rng(0)
    n = 600
    y = (rng.random(n) < 0.4).astype(float)
    codes = rng.normal(size=(n, 5))
    codes[:, 3] -= 2.0 * y  # unit 3 is LOW for the label: sign -1
    disc, val = np.arange(300), np.arange(300, 600)
    lab = pd.DataFrame({"attr": y})
    a = analysis.validated_alignment(codes, lab, disc, val)
    assert a.loc["attr", "unit"] == 3 and a.loc["attr", "sign"] == -1 and a.loc["attr", "val"] > 0.8
    # noise only: whatever unit discovery picks, validation is near chance (no optimism carried over)
    noise = analysis.validated_alignment(rng.normal(size=(n, 200)), lab, disc, val)
    assert noise.loc["attr", "disc"] > noise.loc["attr", "val"]
    assert abs(noise.loc["attr", "val"] - 0.5) < 0.12
    one = analysis.validated_alignment(codes, lab, disc, val, two_sided=False)
    assert one.loc["attr", "sign"] == 1 and one.loc["attr", "unit"] != 3


def test_bimodality_separates_two_clusters_from_one():
    rng = np.random.default_rng(0)
    two = np.concatenate([10 ** rng.normal(-1, 0.15, 300), 10 ** rng.normal(-3, 0.15, 100), np.zeros(5)])
    one = 10 ** rng.normal(-1.5, 0.4, 400)
    b2, b1 = analysis.bimodality(two), analysis.bimodality(one)
    assert b2["ashman_d"] > 2 > b1["ashman_d"]
    assert b2["sparse_mode"] == pytest.approx(1e-3, rel=0.3) and b2["dead"] == 5
    assert np.isnan(analysis.bimodality(np.zeros(20))["ashman_d"])


def test_ev_at_l0_interpolates_in_log_l0_without_extrapolating():
    assert analysis.ev_at_l0([4, 16, 64], [0.5, 0.7, 0.9], 8) == pytest.approx(0.6)
    assert np.isnan(analysis.ev_at_l0([4, 16], [0.5, 0.7], 100))
    grid = pd.DataFrame({"L0": [5.0, 20.0, 50.0], "EV": [0.7, 0.92, 0.97]})
    assert analysis.pick_best(grid, 0.9)["L0"] == 20.0
    assert analysis.pick_best(grid, 0.99)["L0"] == 50.0


def test_resampling_revives_dead_latents_and_is_counted():
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    sae = saes.create("vanilla", d_in=8, n_latents=16, lr=1e-2, resample_every=10)
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)  # every latent dead from the start
    res = saes.train_sae(sae, x, steps=25, batch_size=64)
    assert res.final["resampled"] >= 16
    assert res.final["alive_%"] > 0
    g = saes.create("gated", d_in=8, n_latents=16, resample_every=10)
    with torch.no_grad():
        g.b_gate.fill_(-100.0)
    assert saes.train_sae(g, x, steps=15, batch_size=64).final["resampled"] >= 16
    with pytest.raises(ParameterError):
        saes.create("vanilla", resample_every=-1)


def test_jumprelu_thresholds_move_with_lambda():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(1024, 16) + 0.3, dim=1)
    l0 = {}
    for lam in (0.0, 1.0):
        sae = saes.create("jumprelu", d_in=16, n_latents=32, l0_coeff=lam, bandwidth=0.05, theta0=0.05,
                          threshold_lr_mult=10.0, input_norm="sqrt_d", lr=3e-3)
        res = saes.train_sae(sae, x, steps=150, batch_size=128)
        l0[lam] = res.final["L0"]
    assert l0[1.0] < 0.7 * l0[0.0], l0
    groups = saes.create("jumprelu", threshold_lr_mult=5.0).param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 5e-3]


def test_grid_seeds_reports_each_eval_set_and_seed():
    x = torch.randn(200, 8)
    grid, models = analysis.grid_seeds(x, [("topk", {"k": 2})], [0, 1], steps=3, batch_size=32,
                                       evals={"disc": x[:50], "val": x[50:100]}, expansion=2)
    assert list(grid["seed"]) == [0, 1] and "val_EV" in grid and len(models) == 2
    with pytest.raises(ParameterError):
        analysis.grid_seeds(x, [("topk", {"k": 2})], [0], steps=1, batch_size=8, evals={})


def test_grid_on_two_worker_processes_trains_the_same_saes():
    """Chapter 4's grid runs its SAEs in two processes at default; the dictionaries must not change."""
    x = torch.randn(300, 8)
    runs = [("topk", {"k": 2}), ("vanilla", {"l1_coeff": 1.0, "resample_every": 4}), ("gated", {"l1_coeff": 1.0})]
    kw = dict(steps=12, batch_size=32, evals={"disc": x[:60]}, expansion=2)
    g1, m1 = analysis.grid_seeds(x, runs, [0, 1], workers=1, **kw)
    g2, m2 = analysis.grid_seeds(x, runs, [0, 1], workers=2, **kw)
    assert list(m1) == list(m2) and len(m1) == 6
    for key in m1:
        for (n, a), b in zip(m1[key].state_dict().items(), m2[key].state_dict().values(), strict=True):
            assert torch.equal(a, b), (key, n)
    timing = ["templates/s", "seconds"]
    pd.testing.assert_frame_equal(g1.drop(columns=timing), g2.drop(columns=timing))
    with pytest.raises(ParameterError, match="workers"):
        saes.train_many([], workers=0)


def test_paper_checkpoint_loads_strictly(tmp_path):
    """Chapter 4's paper-profile reader refuses a checkpoint with a renamed key (it used strict=False)."""
    import torch

    from facestudy import models
    from facestudy.errors import DataError
    from facestudy.interpret.analysis import study_model

    sd = models.create("iresnet100").state_dict()
    key = "conv1.weight"
    sd["renamed." + key] = sd.pop(key)
    torch.save(sd, tmp_path / "iresnet100.pth")
    with pytest.raises(DataError, match="renamed.conv1.weight"):
        study_model("checkpoint", str(tmp_path / "iresnet100.pth"))


def test_saes_stage_fills_the_caches_the_chapter_reads(tmp_path, monkeypatch, capsys):
    """`facestudy train 04_facemint saes` (make book's second cold stage) embeds the chapter's faces and trains
    its SAEs once; the chapter's own calls with the same settings then embed no face and train no SAE."""
    from facestudy import cli, data, models, profiles
    from facestudy.errors import DataError

    try:
        model = models.pretrained("mobilefacenet-ms1m")
    except DataError:
        pytest.skip("mobilefacenet-ms1m weights absent")
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path / "cache"))
    sets = ["celeba10k"] if data.available("celeba10k") else ["no_such_set"]  # else the synthetic world
    over = {"datasets": sets, "limit_per_set": 40, "sae_steps": 4, "sae_seeds": 2}
    argv = ["train", "04_facemint", "saes", "--profile", "smoke", "--quiet"]
    for k, v in over.items():
        argv += ["--set", f"{k}={v}"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "templates" in out and "computed" in out and "SAEs: sweep" in out
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.pt"))) == 1
    n_saes = len(list((tmp_path / "cache" / "saes").glob("sae-*.pt")))
    cfg = profiles.resolve("04_facemint", "smoke", **over)
    # the grid x seeds and F1's dictionary x seeds, plus the sweep's SAEs that the grid does not hold already
    # (smoke's sweep SAE at expansion 2 is the grid's gated SAE of seed 0: one key, one file)
    assert n_saes == 2 * len(analysis.grid_runs(cfg, 128)) + 2
    faces = analysis.study_faces(cfg, seed=0)
    calls = []
    X = analysis.templates(model, [faces], threads=None, progress=calls.append)
    assert calls == [] and X.shape == (len(faces), 128)
    split = analysis.study_split(cfg, faces, seed=0)
    trained = []
    monkeypatch.setattr(saes.train, "train_sae", lambda *a, **k: trained.append(1))
    got = analysis.train_study_saes(cfg, X[split["train"]], X[split["discovery"]], X[split["validation"]], [0, 1])
    assert trained == [] and len(got["grid"][0]) == 2 * len(analysis.grid_runs(cfg, 128))
    assert (got["f1"][0]["M"] == cfg.f1_expansion * 128).all()
    assert len(list((tmp_path / "cache" / "saes").glob("sae-*.pt"))) == n_saes


def test_sae_cache_returns_the_trained_sae_and_retrains_a_changed_job(tmp_path):
    x = torch.randn(300, 8)
    def job(seed=0, steps=5):
        return (saes.create("topk", d_in=8, k=2, expansion=2, seed=seed), x, {"steps": steps, "batch_size": 32,
                                                                             "seed": seed})
    first = saes.train_many([job()], cache=tmp_path)[0]
    again = saes.train_many([job()], cache=tmp_path)[0]
    for k, v in first.sae.state_dict().items():
        assert torch.equal(v, again.sae.state_dict()[k])
    assert again.final == first.final and again.seconds == first.seconds
    assert list(again.history.columns) == list(first.history.columns)
    assert len(list(tmp_path.glob("sae-*.pt"))) == 1
    saes.train_many([job(steps=6), job(seed=1)], cache=tmp_path)  # other steps, other seed: new entries
    assert len(list(tmp_path.glob("sae-*.pt"))) == 3
    path = next(iter(tmp_path.glob("sae-*.pt")))
    path.write_bytes(b"damaged")  # a damaged entry is reported and trained again
    with pytest.warns(UserWarning):
        saes.train_many([job(), job(steps=6), job(seed=1)], cache=tmp_path)
    assert len(list(tmp_path.glob("sae-*.pt"))) == 3
    # a file whose weights load but whose record is broken: the retrained SAE starts from the true initialisation
    other = job(seed=2)
    key = tmp_path / f"sae-{saes.train.job_key(*other)}.pt"
    torch.save({"state": {k: torch.zeros_like(v) for k, v in other[0].state_dict().items()}}, key)
    with pytest.warns(UserWarning):
        retrained = saes.train_many([other], cache=tmp_path)[0]
    fresh = saes.train_many([job(seed=2)])[0]
    for k, v in fresh.sae.state_dict().items():
        assert torch.equal(v, retrained.sae.state_dict()[k])


def test_tail_share_reads_how_far_from_converged_a_run_ended():
    steps = np.arange(40)
    flat = pd.DataFrame({"mse": np.r_[100.0, 10.0 + 90.0 * np.exp(-steps[1:] / 3.0)]})  # converged early
    linear = pd.DataFrame({"mse": 100.0 - 2.0 * steps})  # falls at a constant rate to the end
    assert saes.train.tail_share(flat, window=1) < 0.001
    assert saes.train.tail_share(linear, window=1) == pytest.approx(0.25, abs=0.02)
    assert np.isnan(saes.train.tail_share(linear.head(5)))
    assert np.isnan(saes.train.tail_share(pd.DataFrame({"mse": np.full(20, 3.0)})))
    assert np.isnan(saes.train.tail_share(pd.DataFrame({"loss": np.arange(20.0)})))
