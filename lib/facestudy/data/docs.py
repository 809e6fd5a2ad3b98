"""Generate the book page ``book/data.md`` from the manifests (so the page and the manifests never disagree).

Run ``python -m facestudy.data.docs`` after editing a manifest; a test checks the page is current.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .store import REPO_ROOT, manifests

INTRO = """\
# Data: real faces, weights and formats

Every chapter can run on the synthetic face world alone; with the real files below it also runs on real
faces. This page is generated from `data_manifests/*.yaml` by `python -m facestudy.data.docs`: edit the
manifests, not this page.

## Where the files go

* **Data roots** (read-only): set `FACESTUDY_DATA` to the folder(s) holding the files, several separated by
  `{sep}`. Each file is expected at `<root>/<path>` with the path listed below. Without the variable, a folder
  `../shared/data` beside the checkout is used when it exists. Nothing is ever written into a data root.
* **Cache** (writable): `FACESTUDY_CACHE`, default `~/.cache/facestudy`. It holds the sha256 of every file
  checked (keyed by path, size, modification and change time and inode, so a file is hashed once and again
  after any edit), tar indexes (members are read by offset, never extracted wholesale) and the prepared,
  aligned datasets with the sha256 of each prepared file. Every cache entry is written to a temporary name
  and renamed, so a killed run never leaves a half-written entry (leftover temporary files of killed runs
  are removed later); a cache entry that fails to load is reported by its path and rebuilt.
* `facestudy data status` prints one row per manifest (present / missing / sha256 ok / prepared) and
  `facestudy data prepare` builds the aligned datasets (idempotent and resumable).

A missing file, a file with the wrong sha256 or an unreadable archive stops with one sentence that names the
dataset, the file, its sha256, where to get it and where to put it. A file that is there but damaged (the
wrong size, as after an interrupted download, or the wrong sha256) is reported as damaged, never taken for
absent: a chapter stops naming it instead of falling back to the synthetic world. Corrupt images are skipped
and counted; more than 1 % corrupt images is an error.

## From files to aligned faces

`facestudy.data.load(name, limit=None, seed=0)` returns a `FaceSet` of 112x112 RGB faces aligned to the
ArcFace 5-point template (left eye, right eye, nose, left and right mouth corner at
(38.3, 51.7), (73.5, 51.5), (56.0, 71.7), (41.5, 92.4), (70.7, 92.2)), with the 5 landmarks of each aligned
face as meta columns `lmk_x0 .. lmk_y4`:

1. the JPEG is read from the tar by offset and decoded;
2. our MTCNN (P-, R- and O-Net in plain torch, weights from `models/mtcnn`) finds the face. These sources are
   standardised crops, so a fast O-Net-only pass starts from the face box typical of each source; an image
   where that pass finds no face goes through the full cascade (image pyramid, P-Net, NMS, R-Net, O-Net);
3. one similarity transform (rotation, uniform scale, translation; least squares on the 5 points) maps the
   landmarks onto the template and the image is warped in torch (bilinear, black outside the source);
4. the result is cached per shard of 1000 images (or per subset, for small `limit` runs).

CelebA-10k and UTKFace images without a face are dropped and counted (`faceset.info`). CelebA-id299 is
already aligned to the ArcFace template and is kept as it is (landmarks detected). The mirrored LFW-112
turned out to be aligned in the 96x112 SphereFace convention placed at the left of a 112x112 canvas (faces
about 8 px left of the ArcFace template, measured with our MTCNN), so `load("lfw")` re-aligns it to the
ArcFace template; this leaves a thin black band at the left edge. `lfw_pairs(n_per_fold)` gives the View-2
protocol (10 folds) and loads only the images the chosen pairs use.

Standard formats are read without their original frameworks: InsightFace verification `.bin` files through
a restricted unpickler (`read_bin`; only numpy byte arrays are admitted, so a malicious pickle cannot run
code), MXNet RecordIO `.rec` + `.idx` (`RecordIOReader`, `RecordIOWriter`), identity folders, LFW
`pairs.txt`, the CelebA identity and attribute lists, UTKFace file-name labels; `LazyImageDataset` wraps any
of them as a torch `Dataset` of uint8 images.
"""


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_book_page() -> str:
    """The Markdown of ``book/data.md``, from the manifests."""
    import os

    ms = manifests()
    out = [INTRO.format(sep=os.pathsep), "\n## Mirrored datasets and weights\n",
           "| manifest | what | counts | licence |", "|---|---|---|---|"]
    own = [m for m in ms.values() if not m.get("user_supplied")]
    user = [m for m in ms.values() if m.get("user_supplied")]
    for m in own:
        counts = ", ".join(f"{k} {v:,}" for k, v in (m.get("counts") or {}).items()) or "-"
        out.append(f"| `{m['name']}` ({m['kind']}) | {_cell(m['title'])} | {counts} | {_cell(m['licence'])} |")
    out += ["\n## Files you supply for the `paper` profile\n",
            "These are not mirrored; put your own copies under a data root with the names below.\n",
            "| manifest | what | expected files | how to obtain |", "|---|---|---|---|"]
    for m in user:
        files = "<br>".join(f"`{f['path']}`" for f in m["files"])
        out.append(f"| `{m['name']}` | {_cell(m['title'])} | {files} | {_cell(m['obtain'])} |")
    out.append("\n## Every manifest in detail\n")
    for m in ms.values():
        out += [f"### `{m['name']}`: {_cell(m['title'])}\n", _cell(m["description"]) + "\n",
                f"* **Source:** {_cell(m['source'])}", f"* **Licence:** {_cell(m['licence'])}",
                f"* **How to obtain:** {_cell(m['obtain'])}\n",
                "| file | size | sha256 | content |", "|---|---|---|---|"]
        for f in m["files"]:
            size = f"{f['size']:,} B" if f.get("size") else "-"
            sha = f"`{f['sha256'][:16]}…`" if f.get("sha256") else "any"
            what = _cell(f["description"]) + (f" (`{_cell(f['layout'])}`)" if f.get("layout") else "")
            out.append(f"| `{f['path']}` | {size} | {sha} | {what} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    target = REPO_ROOT / "book" / "data.md"
    Path(target).write_text(render_book_page())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
