"""RetinaFace-MobileNet-0.25 vs our MTCNN on the real images we have (issue 21): detection rate, landmark
agreement, speed. Prints one table; figures go to the issue note / book/data.md.

    nice -n 10 env OMP_NUM_THREADS=1 FACESTUDY_THREADS=1 .venv/bin/python benchmarks/detectors.py --n 200

Sets: LFW-112 (aligned crops, SphereFace convention), CelebA 89x109 (loose crops), UTKFace 200x200 chips,
CelebA-id299 (aligned 112, in-the-wild sources). Images are read straight from the tars (every k-th member).
"found": a face with score >= 0.7 (MTCNN's O-Net cut) / >= the RetinaFace threshold (0.5); the face kept is
the one nearest the image centre. Landmark distance: mean over the 5 points between the two detectors, as a
fraction of MTCNN's inter-ocular distance; for LFW-112 also each detector's distance to the nominal source
landmarks (the ArcFace template 8 px left).
"""
from __future__ import annotations

import argparse
import io
import tarfile
import time

import numpy as np
from PIL import Image

import facestudy.data as D
from facestudy.data.datasets import SPHEREFACE_IN_112
from facestudy.data.retinaface import RetinaFace

SETS = {
    "lfw": ("lfw", "lfw/lfw-112x112.tar"),
    "celeba": ("celeba10k", "celeba/img_align_celeba_89x109_000001-010000.tar"),
    "utkface": ("utkface", "utkface/utkface_crop_part1.tar"),
    "celeba_id299": ("celeba_id299", "celeba-id299/celeba_id299_aligned112.tar"),
}


def sample(name: str, n: int) -> list[np.ndarray]:
    manifest, rel = SETS[name]
    path = D.locate(manifest, rel)
    with tarfile.open(path) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith((".jpg", ".png"))]
        members = members[:: max(1, len(members) // n)][:n]
        return [np.array(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")) for m in members]


def pick(dets, cut: float):
    out = []
    for d in dets:
        keep = d.scores >= cut
        if not keep.any():
            out.append(None)
            continue
        sub = D.Detections(d.boxes[keep], d.scores[keep], d.landmarks[keep], image_size=d.image_size)
        out.append(sub.landmarks[sub.best("centre")])
    return out


def timed(fn, imgs):
    t0, c0 = time.perf_counter(), time.process_time()
    r = fn(imgs)
    return r, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--sets", default="lfw,celeba,utkface,celeba_id299")
    args = ap.parse_args()
    mt = D.MTCNN.from_manifest()
    rf = RetinaFace.from_manifest()
    rf.detect(np.zeros((1, 112, 112, 3), np.uint8))  # export / session outside the timing
    print(f"RetinaFace backend: {rf.backend}")
    print("| set | n | MTCNN found | RetinaFace found | both | lmk dist RF vs MTCNN (IOD) | MTCNN img/s (CPU ms/img) "
          "| RetinaFace img/s (CPU ms/img) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        imgs = sample(name, args.n)
        h, w = imgs[0].shape[:2]
        mfs = max(12, int(0.2 * min(h, w)))
        mdet, mt_wall, mt_cpu = timed(lambda x, m=mfs: mt.detect(x, min_face_size=m), imgs)
        rdet, rf_wall, rf_cpu = timed(rf.detect, imgs)
        ml, rl = pick(mdet, 0.7), pick(rdet, rf.threshold)
        both = [i for i in range(len(imgs)) if ml[i] is not None and rl[i] is not None]
        dist = [np.linalg.norm(rl[i] - ml[i], axis=1).mean() / np.linalg.norm(ml[i][1] - ml[i][0]) for i in both]
        n = len(imgs)
        print(f"| {name} {w}x{h} | {n} | {sum(x is not None for x in ml)} | {sum(x is not None for x in rl)} | "
              f"{len(both)} | {np.median(dist):.3f} median, {np.mean(dist):.3f} mean | {n / mt_wall:.1f} "
              f"({1000 * mt_cpu / n:.0f}) | {n / rf_wall:.1f} ({1000 * rf_cpu / n:.0f}) |")
        if name == "lfw":
            for lab, lms in (("MTCNN", ml), ("RetinaFace", rl)):
                d = [np.linalg.norm(x - SPHEREFACE_IN_112, axis=1).mean() for x in lms if x is not None]
                print(f"|  LFW-112 {lab}: mean distance to the source landmarks {np.mean(d):.2f} px "
                      f"(median {np.median(d):.2f}) |")


if __name__ == "__main__":
    main()
