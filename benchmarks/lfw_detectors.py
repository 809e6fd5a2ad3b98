"""LFW verification through detect -> align -> embed, RetinaFace vs our MTCNN (issue 21: the new default
detector must not cost accuracy).

    nice -n 10 .venv/bin/python benchmarks/lfw_detectors.py [--per-fold 100]

The LFW-112 images as shipped (SphereFace layout) are detected, the face nearest the image centre is
aligned to the ArcFace template (nominal source landmarks when no face is found, as data.load does), and
embedded by MobileFaceNet-MS1M with flip-sum; 10-fold accuracy on the first ``--per-fold`` pairs of each
fold. "MTCNN" is the prepared cache (data.load's pipeline: O-Net from the nominal box, full cascade where
that fails).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import facestudy.data as D
from facestudy import eval as E
from facestudy import models
from facestudy.data.datasets import SPHEREFACE_IN_112


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-fold", type=int, default=100)
    args = ap.parse_args()
    raw, pairs = D.lfw_pairs(n_per_fold=args.per_fold, as_shipped=True)
    prepared, pairs2 = D.lfw_pairs(n_per_fold=args.per_fold)
    assert (pairs[["a", "b", "same"]].to_numpy() == pairs2[["a", "b", "same"]].to_numpy()).all()
    assert list(raw.meta["path"]) == list(prepared.meta["path"])
    rf = D.RetinaFace.from_manifest()
    t0 = time.perf_counter()
    dets = rf.detect(raw.images)
    t_det = time.perf_counter() - t0
    lms, found = [], 0
    for d in dets:
        keep = d.scores >= 0.7
        if keep.any():
            sub = D.Detections(d.boxes[keep], d.scores[keep], d.landmarks[keep], image_size=d.image_size)
            lms.append(sub.landmarks[sub.best("centre")])
            found += 1
        else:
            lms.append(SPHEREFACE_IN_112)
    rf_aligned = D.align(raw.images, np.stack(lms))
    mt_src = prepared.meta[[f"src_lmk_{a}{i}" for i in range(5) for a in "xy"]].to_numpy(np.float32).reshape(-1, 5, 2)
    dist = np.linalg.norm(np.stack(lms) - mt_src, axis=2).mean(1)
    ok = np.isfinite(dist)
    model = models.pretrained("mobilefacenet-ms1m")
    print(f"{len(raw)} images, {len(pairs)} pairs; RetinaFace found {found}/{len(raw)} "
          f"({len(raw) / t_det:.0f} img/s), MTCNN detected {int(prepared.meta['detected'].sum())}/{len(raw)}; "
          f"landmark distance RetinaFace vs MTCNN: median {np.median(dist[ok]):.2f} px, mean {dist[ok].mean():.2f} px")
    for name, imgs in (("as shipped (no re-alignment)", raw.images), ("MTCNN -> align", prepared.images),
                       ("RetinaFace -> align", rf_aligned)):
        emb = model.embed(imgs, flip=True)
        r = E.verification(emb, pairs)
        print(f"| {name} | {100 * r.accuracy:.2f} ± {100 * r.accuracy_std:.2f} | AUC {r.auc:.4f} |")


if __name__ == "__main__":
    main()
