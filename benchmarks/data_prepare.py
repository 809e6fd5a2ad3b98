"""Data-layer figures (issue 3, book/data.md): MTCNN detection rate and landmark distance on LFW-112,
alignment rates, warm metadata-load time and prepare time.

    FACESTUDY_DATA=/work/shared/data python benchmarks/data_prepare.py [--sample 1000] [--fresh]
                                                                       [--grid /tmp/aligned_grid.png]

--sample N  run the FULL MTCNN cascade (pyramid, P/R/O-Net) on N LFW-112 images (all 13,233 when 0)
--fresh     prepare every dataset from scratch into a temporary cache and time it (slow: the whole
            preparation); otherwise the preparation summaries recorded in the cache are printed
--grid      save a grid of aligned crops from every dataset, landmarks drawn, to this PNG
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def detection_on_lfw(sample: int, seed: int = 0) -> dict:
    import facestudy.data as D
    from facestudy.data.datasets import SPHEREFACE_IN_112, index
    from facestudy.data.formats import decode_image

    idx = index("lfw")
    rows = np.arange(len(idx)) if sample <= 0 else np.sort(
        np.random.default_rng(seed).permutation(len(idx))[:sample])
    det = D.MTCNN.from_manifest()
    found, raw = [], []
    t0 = time.perf_counter()
    with D.TarReader(D.locate("lfw", "lfw-112x112.tar")) as reader:
        for c in range(0, len(rows), 256):
            ims = [decode_image(reader.read(p)) for p in idx["path"].iloc[rows[c:c + 256]]]
            for d in det.detect(ims):
                ok = len(d) > 0
                found.append(ok)
                if ok:
                    raw.append(d.landmarks[d.best("largest")])
    secs = time.perf_counter() - t0
    raw = np.stack(raw)
    T = D.ARCFACE_TEMPLATE_112
    realigned = D.transform_points(raw, D.similarity_transform(raw, T))
    return {
        "images": len(rows), "detection_rate": float(np.mean(found)), "seconds": secs,
        "mean_px_source_vs_arcface_template": float(np.linalg.norm(raw - T, axis=2).mean()),
        "mean_px_source_vs_sphereface_in_112": float(np.linalg.norm(raw - SPHEREFACE_IN_112, axis=2).mean()),
        "mean_px_after_realignment": float(np.linalg.norm(realigned - T, axis=2).mean()),
        "mean_source_landmarks": raw.mean(0).round(2).tolist(),
    }


def warm_metadata_seconds() -> dict:
    """index() of every dataset in a fresh interpreter (file hashes and tar indexes already cached)."""
    code = ("import time,facestudy.data as D\nt=time.perf_counter()\n"
            "n={k: len(D.index(k)) for k in D.DATASETS if D.available(k)}\n"
            "print(time.perf_counter()-t, n)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    return {"seconds": float(out[0]), "rows": out[1].strip()}


def warm_load_seconds() -> dict:
    import facestudy.data as D

    res = {}
    for name in D.DATASETS:
        if D.available(name) and D.is_prepared(name):
            t = time.perf_counter()
            fs = D.load(name)
            res[name] = {"seconds": round(time.perf_counter() - t, 2), "images": len(fs),
                         "requested": fs.info["requested"], "aligned_rate": len(fs) / fs.info["requested"],
                         "detected_rate": float(fs.meta["detected"].mean()),
                         "mean_px_to_template": float(np.linalg.norm(
                             fs.landmarks[fs.meta["detected"].to_numpy()] - D.ARCFACE_TEMPLATE_112, axis=2).mean()),
                         "detector": fs.meta["detector"].value_counts().to_dict()}
    return res


def grid(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import facestudy.data as D

    sets = [D.load(n, limit=60, seed=3) for n in D.DATASETS if D.available(n)]
    fig, axes = plt.subplots(len(sets), 8, figsize=(12, 1.6 * len(sets)))
    T = D.ARCFACE_TEMPLATE_112
    for r, fs in enumerate(sets):
        for c in range(8):
            ax = axes[r, c]
            i = c * (len(fs) // 8)
            ax.imshow(fs.images[i])
            ax.scatter(*fs.landmarks[i].T, s=8, c=["r", "g", "b", "y", "m"])
            ax.scatter(*T.T, s=14, marker="+", c="w", linewidths=0.8)
            ax.set_axis_off()
        axes[r, 0].set_title(fs.name, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"grid of aligned crops: {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--grid", default="")
    args = ap.parse_args()
    import facestudy.data as D
    from facestudy.data.datasets import _complete_marker

    print("warm metadata load (all datasets, fresh interpreter):", warm_metadata_seconds())
    r = detection_on_lfw(args.sample)
    print(f"LFW-112 full MTCNN cascade on {r['images']} images: detection rate {100 * r['detection_rate']:.2f} %, "
          f"{r['seconds']:.1f} s")
    print("  mean landmark distance, source images vs ArcFace template: "
          f"{r['mean_px_source_vs_arcface_template']:.2f} px; vs the 96x112 SphereFace template in 112: "
          f"{r['mean_px_source_vs_sphereface_in_112']:.2f} px; after re-alignment: "
          f"{r['mean_px_after_realignment']:.2f} px")
    print("  mean source landmarks:", r["mean_source_landmarks"])
    for name, v in warm_load_seconds().items():
        print(f"load({name!r}) warm: {v}")
    if args.fresh:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, FACESTUDY_CACHE=tmp)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import facestudy.data as D; print(D.prepare(progress=False))"],
                           env=env, check=True)
            print(f"prepare everything from scratch: {time.perf_counter() - t:.0f} s")
    else:
        for name in D.DATASETS:
            if D.is_prepared(name):
                print(f"prepare summary {name}: {json.loads(_complete_marker(name).read_text())}")
    if args.grid:
        grid(args.grid)


if __name__ == "__main__":
    main()
