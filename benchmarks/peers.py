"""Speed against what a user would pick instead (issue 21), side by side, medians of interleaved runs.

    nice -n 10 .venv/bin/python benchmarks/peers.py [--rounds 3] [--n-detect 100] [--n-embed 256]

Rows (each measurement runs in a fresh subprocess, so the OpenMP / malloc settings of a variant apply):

- detect: our detector (RetinaFace-MobileNet-0.25, onnxruntime, our batching/decoding) vs the same ONNX file
  run the way the release's detect.py runs it (one image per call, default onnxruntime session, numpy
  decode + NMS); "before": our MTCNN. Images: UTKFace 200x200 chips (every k-th of the tar).
- embed: ``FaceModel.embed`` (BatchNorm-folded torch, sub-batches of 128) vs the exported MobileFaceNet-MS1M
  in a default onnxruntime session at batch 256; "before": eager torch.
- contention: the face-world renderer, alone and with one competing 2-thread torch job, with facestudy's
  process settings (passive OpenMP waits, mallopt) and without them ("before": OMP_WAIT_POLICY unset,
  FACESTUDY_NO_MALLOPT=1).
- trainer: ``train.fit`` vs a plain torch loop (same model, head, batches, optimiser) on a face-world set.
- chapter (only with ``--only ...,chapter``; minutes): ``facestudy run 00a`` (``--chapter``, ``--chapter-profile``)
  alone and with the competing job; its ratio is printed above the last line.

The machine this runs on may be shared: read the ratios, not the absolute numbers. Workers print CPU time
(user + sys of the worker) beside wall time. Results also go to ``<cache>/benchmarks/peers.json`` (chapter 0
shows them when present). The LAST line is exactly ``ratios: detect=X embed=Y contention=Z trainer=W``:
ours/peer throughput for detect and embed, contended/idle wall time for the renderer, fit/plain time.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# ------------------------------------------------------------------------------------------- workers
def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _utk(n: int):
    import numpy as np
    from PIL import Image

    import facestudy.data as D

    path = D.locate("utkface", "utkface/utkface_crop_part1.tar")
    with tarfile.open(path) as tf:
        ms = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        ms = ms[:: max(1, len(ms) // n)][:n]
        return [np.array(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")) for m in ms]


def _faces(n: int):
    import numpy as np

    import facestudy.faceworld as fw

    ids = fw.sample_identities(n, seed=0)
    imgs, _, _ = fw.render(ids, fw.random_attributes(n, seed=1), size=112)
    return np.asarray(imgs)


def _peer_nms(boxes, scores, thr):
    import numpy as np

    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        w = np.maximum(0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        ovr = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[1:][ovr <= thr]
    return keep


def worker(name: str, args) -> dict:
    # facestudy first, as a chapter does: its process settings (OMP_WAIT_POLICY=PASSIVE) must be in the
    # environment before torch loads its OpenMP runtime, which reads them once (torch imported first keeps
    # the spinning default: the renderer measured 27x slower under contention that way, 1.8x this way; 2026-11-29)
    import facestudy  # noqa: F401,I001  (process settings)
    import numpy as np
    import torch

    out: dict = {"threads": torch.get_num_threads()}
    if name.startswith("detect"):
        imgs = _utk(args.n_detect)
        if name == "detect_mtcnn":
            import facestudy.data as D

            det = D.MTCNN.from_manifest()
            run = lambda: det.detect(imgs, min_face_size=40)  # noqa: E731
        else:
            from facestudy.data.retinaface import RetinaFace, decode, priors

            rf = RetinaFace.from_manifest()
            rf.detect(imgs[:1])
            if name == "detect_ours":
                run = lambda: rf.detect(imgs)  # noqa: E731
            else:
                import onnxruntime as ort

                sess = ort.InferenceSession(str(rf._onnx_path), providers=["CPUExecutionProvider"])

                def run():
                    res = []
                    for im in imgs:
                        x = (im[..., ::-1].astype(np.float32) - (104, 117, 123)).transpose(2, 0, 1)[None]
                        loc, conf, ldm = sess.run(None, {"x": x.astype(np.float32)})
                        keep = np.where(conf[0] > 0.5)[0]
                        b, lm = decode(loc[0][keep], ldm[0][keep], priors(*im.shape[:2])[keep])
                        k = _peer_nms(b, conf[0][keep], 0.4)
                        res.append((b[k], conf[0][keep][k], lm[k]))
                    return res
        run()  # warm-up
        t0, c0 = time.perf_counter(), _cpu()
        dets = run()
        out.update(wall=time.perf_counter() - t0, cpu=_cpu() - c0, n=len(imgs))
        scores = [d[1] if isinstance(d, tuple) else d.scores for d in dets]
        out["found"] = int(sum(bool(len(s)) and float(np.max(s)) >= 0.7 for s in scores))
    elif name.startswith("embed"):
        from facestudy import models
        from facestudy.data.store import cache_dir
        from facestudy.models import fast

        m = models.pretrained("mobilefacenet-ms1m")
        imgs = _faces(args.n_embed)
        if name == "embed_peer":
            import onnxruntime as ort

            x = m.preprocess(imgs).numpy()
            path = fast.export(m, torch.from_numpy(x[:1]), cache_dir() / "onnx" /
                               f"mobilefacenet-ms1m-{fast.state_key(m)}.onnx", {0: "n"}, ("embedding",))
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

            def run():
                xx = m.preprocess(imgs).numpy()
                return np.concatenate([sess.run(None, {"x": xx[i:i + 256]})[0] for i in range(0, len(xx), 256)])
        else:
            m.fast_inference = name == "embed_ours"
            run = lambda: m.embed(imgs, batch_size=256)  # noqa: E731
        run()
        t0, c0 = time.perf_counter(), _cpu()
        run()
        out.update(wall=time.perf_counter() - t0, cpu=_cpu() - c0, n=len(imgs))
    elif name == "render":
        import facestudy.faceworld as fw

        ids = fw.sample_identities(args.n_render, seed=0)
        attrs = fw.random_attributes(args.n_render, seed=1)
        fw.render(ids[:8], None, size=112)
        t0, c0 = time.perf_counter(), _cpu()
        fw.render(ids, attrs, size=112, batch_size=64)
        out.update(wall=time.perf_counter() - t0, cpu=_cpu() - c0, n=args.n_render)
    elif name.startswith("train"):
        import facestudy.faceworld as fw
        from facestudy import losses, models, train

        fs = fw.make_faceset(16, 8, seed=0, size=112)
        torch.manual_seed(0)
        model = models.create("smallcnn", embedding_dim=64)
        head = losses.make_head("arcface", 64, 16)
        bs, epochs = 32, 1
        t0, c0 = time.perf_counter(), _cpu()
        if name == "train_fit":
            train.fit(model, head, fs, epochs=epochs, batch_size=bs, lr=0.05, device="cpu", progress=False,
                      schedule="constant")
        else:
            opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9,
                                  weight_decay=5e-4)
            images = torch.from_numpy(fs.images).permute(0, 3, 1, 2).contiguous()
            labels = torch.from_numpy(fs.labels)
            g = torch.Generator().manual_seed(0)
            model.train()
            head.train()
            for _ in range(epochs):
                order = torch.randperm(len(labels), generator=g)
                for i in range(0, len(order) - bs + 1, bs):
                    idx = order[i:i + bs]
                    loss = head(model(model.preprocess(images[idx])), labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        out.update(wall=time.perf_counter() - t0, cpu=_cpu() - c0, n=epochs * (len(fs.labels) // bs) * bs)
    elif name == "chapter":
        import tempfile

        # the whole chapter through the CLI (its kernel is a child: CPU time from the children's rusage)
        cli = Path(sys.executable).with_name("facestudy")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = subprocess.run([str(cli), "run", args.chapter, "--profile", args.chapter_profile, "--out", tmp,
                                  "--quiet"], capture_output=True, text=True)
            wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"chapter {args.chapter} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.update(wall=wall, cpu=ch.ru_utime + ch.ru_stime, n=1)
    else:
        raise SystemExit(f"unknown worker {name}")
    return out


# ------------------------------------------------------------------------------------------- driver
BEFORE_ENV = {"OMP_WAIT_POLICY": "", "FACESTUDY_NO_MALLOPT": "1"}
HOG = ("import os, torch, time\ntorch.set_num_threads(2)\na = torch.randn(768, 768)\nparent = os.getppid()\n"
       "t = time.time()\nwhile time.time() - t < 600 and os.getppid() == parent:\n    a = (a @ a).tanh_()\n")


def spawn(name: str, args, env_extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for k in ("OMP_NUM_THREADS", "FACESTUDY_THREADS", "OMP_WAIT_POLICY", "FACESTUDY_NO_MALLOPT"):
        env.pop(k, None)
    env.update(env_extra or {})
    cmd = [sys.executable, str(HERE), "--worker", name, "--n-detect", str(args.n_detect), "--n-embed",
           str(args.n_embed), "--n-render", str(args.n_render), "--chapter", args.chapter, "--chapter-profile",
           args.chapter_profile]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"worker {name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default="")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-detect", type=int, default=100)
    ap.add_argument("--n-embed", type=int, default=256)
    ap.add_argument("--n-render", type=int, default=256)
    ap.add_argument("--only", default="detect,embed,contention,trainer",
                    help="rows to measure; add 'chapter' for a whole chapter idle vs contended (minutes)")
    ap.add_argument("--chapter", default="00a", help="the chapter of the 'chapter' rows")
    ap.add_argument("--chapter-profile", default="default", help="its profile")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    parts = args.only.split(",")
    jobs: list[tuple[str, str, dict, bool]] = []  # (row key, worker, env, contended)
    if "detect" in parts:
        jobs += [("detect ours", "detect_ours", {}, False), ("detect peer", "detect_peer", {}, False),
                 ("detect before (MTCNN)", "detect_mtcnn", {}, False)]
    if "embed" in parts:
        jobs += [("embed ours", "embed_ours", {}, False), ("embed peer", "embed_peer", {}, False),
                 ("embed before (eager)", "embed_eager", {}, False)]
    if "contention" in parts:
        jobs += [("render idle", "render", {}, False), ("render contended", "render", {}, True),
                 ("render idle (before)", "render", BEFORE_ENV, False),
                 ("render contended (before)", "render", BEFORE_ENV, True)]
    if "trainer" in parts:
        jobs += [("train fit", "train_fit", {}, False), ("train plain", "train_plain", {}, False)]
    if "chapter" in parts:
        jobs += [("chapter idle", "chapter", {}, False), ("chapter contended", "chapter", {}, True)]
    results: dict[str, list[dict]] = {k: [] for k, *_ in jobs}
    if "chapter" in parts:  # one untimed run first, so that every timed run finds the chapter's caches warm
        print(f"warm-up: {args.chapter} {spawn('chapter', args, {})}", flush=True)
    for r in range(args.rounds):
        for key, name, env, contended in (jobs if r % 2 == 0 else jobs[::-1]):  # interleaved, order alternates
            hog = subprocess.Popen([sys.executable, "-c", HOG]) if contended else None
            try:
                if hog:
                    time.sleep(1.0)
                results[key].append(spawn(name, args, env))
                print(f"round {r}: {key}: {results[key][-1]}", flush=True)
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("wall", "cpu")} | {"n": v[0]["n"],
           "threads": v[0]["threads"], **({"found": v[0]["found"]} if "found" in v[0] else {})}
           for k, v in results.items() if v}
    measured = set(med)
    try:  # rows not measured this time keep their latest figures (the JSON says when each row was measured)
        from facestudy.data.store import cache_dir

        old = json.loads((cache_dir() / "benchmarks" / "peers.json").read_text())
        med = {k: v for k, v in old.get("rows", {}).items() if k not in measured} | med
    except (OSError, ValueError, ImportError):
        pass
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for k in measured:
        med[k]["when"] = now
    print(f"medians of {args.rounds} interleaved runs; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end (a shared machine inflates wall time: compare ratios)")
    print("| row | items | wall s | img/s | CPU s (user+sys) | CPU ms/img | notes |")
    print("|---|---|---|---|---|---|---|")
    for k, m in med.items():
        note = f"found {m['found']}/{m['n']}" if "found" in m else ""
        note += "" if k in measured else f" (kept from {m.get('when', 'an earlier run')})"
        print(f"| {k} | {m['n']} | {m['wall']:.2f} | {m['n'] / m['wall']:.1f} | {m['cpu']:.2f} | "
              f"{1000 * m['cpu'] / m['n']:.1f} | {note} threads={m['threads']} |")

    def ratio(a, b, inverse=False):
        if a not in med or b not in med:
            return float("nan")
        return med[b]["wall"] / med[a]["wall"] if inverse else med[a]["wall"] / med[b]["wall"]

    ratios = {"detect": ratio("detect ours", "detect peer", inverse=True),
              "embed": ratio("embed ours", "embed peer", inverse=True),
              "contention": ratio("render contended", "render idle"),
              "trainer": ratio("train fit", "train plain")}
    if "chapter idle" in med:
        print(f"chapter {args.chapter} ({args.chapter_profile}): contended / idle wall time = "
              f"{ratio('chapter contended', 'chapter idle'):.2f}")
    before = {"detect": ratio("detect before (MTCNN)", "detect peer", inverse=True),
              "embed": ratio("embed before (eager)", "embed peer", inverse=True),
              "contention": ratio("render contended (before)", "render idle (before)")}
    print("before -> after: " + ", ".join(f"{k} {before[k]:.2f} -> {ratios[k]:.2f}" for k in before))
    try:
        from facestudy.data.store import cache_dir

        dest = cache_dir() / "benchmarks" / "peers.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                   "rounds": args.rounds, "rows": med, "ratios": ratios, "before": before,
                                   "load_average": os.getloadavg()[0]}, indent=1))
        os.replace(tmp, dest)
    except OSError as e:
        print(f"(could not write the JSON: {e})")
    print("ratios: " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
