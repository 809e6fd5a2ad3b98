"""Does chapter 3's hybrid token model learn to use its keypoints under any nearby setting? (issue 16)

For each variant of the hybrid design (frozen MobileFaceNet tokens + a small transformer), trains the plain
transformer and the KP-RPE transformer for every seed of the ``default`` profile on the chapter's own training
tokens, and prints, on the chapter's LFW pairs:

* mean accuracy aligned / misaligned (strength 1) / misaligned@2 per arm;
* KP-RPE's misaligned gain over the plain transformer, a t-interval over seeds;
* KP-RPE's keypoint sensitivity (mean ||e(P) - e(P')|| / ||e(P)|| under alpha = 0.2 landmark noise);
* the cost of knocking attention out (uniform attention maps) of the KP-RPE model on misaligned faces.

Trained models go through the chapter's checkpoint cache, so the ``default`` row is free after a ``make book``.
Needs the real data (LFW, CelebA-id299, CelebA-10k) and the MobileFaceNet weights. One variant takes about
1-2 min on a 2-core CPU (6 token models); run it on an otherwise idle machine.

    .venv/bin/python benchmarks/kprpe_design_search.py                  # every variant below
    .venv/bin/python benchmarks/kprpe_design_search.py --only default lr100
"""
from __future__ import annotations

import argparse
import time

import numpy as np

VARIANTS: dict[str, dict] = {
    "default": {},
    "lr10": {"recipe": {"rpe_lr_mult": 10.0}},  # the KP-RPE / iRPE module learns 10x faster
    "lr100": {"recipe": {"rpe_lr_mult": 100.0}},
    "depth2-lr100": {"arch": {"depth": 2}, "recipe": {"rpe_lr_mult": 100.0}},
    "epochs30-lr100": {"recipe": {"rpe_lr_mult": 100.0, "epochs": 30}},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="variants to run (default: all)")
    a = p.parse_args()

    import facestudy
    from facestudy import eval as fseval
    from facestudy import models as fsmodels
    from facestudy import stats
    from facestudy.kprpe import experiment as kx
    from facestudy.kprpe import hybrid as hy
    from facestudy.kprpe import landmarks_or_template, noisy_keypoints
    from facestudy.models.vit import attention_knockout

    run = facestudy.runtime.start("03_kprpe", profile="default", seed=0, device="cpu")
    cfg = run.cfg
    trunk = fsmodels.pretrained(cfg.trunk)
    trainset, _ = kx.training_set(cfg, 0, note=run.note, size=112)
    faces, pairs = facestudy.data.lfw_pairs(n_per_fold=cfg.lfw_pairs_per_fold, folds=cfg.lfw_folds)
    kp = landmarks_or_template(faces.landmarks, faces.images.shape[2], faces.images.shape[1])
    conds = hy.make_conditions(faces.images, kp, 0, strengths=cfg.dose_strengths, sides=cfg.dose_sides,
                               trunk=trunk, layer=cfg.trunk_layer, name=f"LFW-{len(faces)}")
    study = hy.Study(cfg, trainset, trunk=trunk, note=run.note)
    ts = study.train_tokens

    def accuracy(model, c, **kw) -> float:
        return 100 * fseval.verification(hy.embed_tokens(model, conds[c].tokens, **kw), pairs).accuracy

    rows = []
    for name in a.only or list(VARIANTS):
        v = VARIANTS[name]
        arch = {**dict(cfg.hybrid), **v.get("arch", {})}
        recipe = {**dict(cfg.hybrid_recipe), **v.get("recipe", {})}
        t0 = time.perf_counter()
        acc = {}
        sens, ko = [], []
        for kind in ("vit", "kprpe"):
            for s in cfg.seeds:
                m, _, _ = hy.train_hybrid(kind, ts, arch, recipe, int(s))
                for c in ("aligned", "misaligned", "misaligned@2"):
                    acc[kind, s, c] = accuracy(m, c)
                if kind == "kprpe":
                    noisy = noisy_keypoints(conds["misaligned"].keypoints, 0.2, 0)
                    sens.append(hy.keypoint_sensitivity(m, conds["misaligned"].tokens, noisy))
                    with attention_knockout(m, "uniform"):
                        ko.append(acc[kind, s, "misaligned"] - accuracy(m, "misaligned"))
        gain = stats.seeds(np.array([acc["kprpe", s, "misaligned"] for s in cfg.seeds]),
                           np.array([acc["vit", s, "misaligned"] for s in cfg.seeds]))
        row = {"variant": name}
        for kind in ("vit", "kprpe"):
            for c in ("aligned", "misaligned", "misaligned@2"):
                row[f"{kind} {c}"] = np.mean([acc[kind, s, c] for s in cfg.seeds])
        row.update({"KP-RPE - ViT misaligned (pts)": gain.text(2), "kp sensitivity": float(np.mean(sens)),
                    "uniform-attention cost (pts)": stats.seeds(np.array(ko)).text(2),
                    "seconds": time.perf_counter() - t0})
        rows.append(row)
        print(" | ".join(f"{k}: {x:.3g}" if isinstance(x, float) else f"{k}: {x}" for k, x in row.items()),
              flush=True)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pd.DataFrame(rows).set_index("variant").round(3).T)


if __name__ == "__main__":
    main()
