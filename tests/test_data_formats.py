"""Face-data formats: verification .bin (restricted unpickler), RecordIO, folders, lists, corrupt images."""
from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

import facestudy.data as D
from facestudy.data import formats
from facestudy.errors import DataError


def _faces(n: int, seed: int = 0, size: int = 32) -> list[np.ndarray]:
    """Smooth colour gradients (JPEG keeps them close to the original)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    return [np.clip(np.stack([a * xx, b * yy, c * (xx + yy) / 2], -1) * 255, 0, 255).astype(np.uint8)
            for a, b, c in rng.uniform(0.3, 1.0, (n, 3))]


def test_restricted_unpickler_rejects_malicious_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    class EvilOs:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > /dev/null",))

    for i, payload in enumerate((Evil(), EvilOs())):
        p = tmp_path / f"evil{i}.bin"
        p.write_bytes(pickle.dumps(([payload], [True])))
        with pytest.raises(DataError, match="not a safe InsightFace verification .bin"):
            D.read_bin(p)


def test_bin_round_trip(tmp_path):
    imgs = [np.full((16, 16, 3), v, np.uint8) for v in (0, 60, 120, 250)]
    p = D.write_bin(tmp_path / "t.bin", imgs, [True, False], quality=100)
    back, issame = D.read_bin(p)
    assert issame.tolist() == [True, False]
    assert len(back) == 4 and all(np.abs(b.astype(int) - a).max() <= 2 for a, b in zip(imgs, back, strict=False))
    with pytest.raises(DataError, match="need 2 per pair"):
        D.write_bin(tmp_path / "u.bin", imgs[:3], [True, False])


@pytest.mark.realdata
def test_read_real_small_lfw_bin():
    if not D.available("small_lfw_bin"):
        pytest.skip("small_lfw.bin absent (set FACESTUDY_DATA)")
    images, issame = D.read_bin(D.locate("small_lfw_bin"))
    assert len(images) == 20 and issame.shape == (10,) and issame.dtype == bool
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in images)
    assert images[0].shape[:2] == (112, 112)
    assert issame.sum() >= 1  # the fixture's pairs are labelled (this copy: all 'same')


def test_recordio_round_trip(tmp_path):
    imgs = _faces(5)
    rec = tmp_path / "train.rec"
    magic = struct.pack("<I", 0xCED7230A)
    raw = b"abcd" + magic + b"efgh" + magic + b"xy"  # contains the magic word at aligned positions
    with D.RecordIOWriter(rec) as w:
        w.write(0, D.pack_record([6.0, 7.0], b""))  # InsightFace header: images are keys 1..5
        for k, im in enumerate(imgs, 1):
            w.write_image(k, im, label=float(k % 2), quality=100)
        w.write(99, raw)
    with D.RecordIOReader(rec) as r:
        assert r.keys == [0, 1, 2, 3, 4, 5, 99]
        assert r.read(99) == raw
        h, im = r.read_image(3)
        assert h["label"] == 1.0 and h["id"] == 3 and im.shape == (32, 32, 3)
        assert np.abs(im.astype(int) - imgs[2]).mean() < 8
        head, _ = D.unpack_record(r.read(0))
        assert head["flag"] == 2 and head["label"].tolist() == [6.0, 7.0]
    ds = D.LazyImageDataset.from_rec(rec)
    assert len(ds) == 5 and ds.labels.tolist() == [1, 0, 1, 0, 1]
    x, y, i = ds[0]
    assert x.shape == (3, 32, 32) and str(x.dtype) == "torch.uint8" and (y, i) == (1, 0)
    (tmp_path / "train.idx").write_text("garbage\n")
    with pytest.raises(DataError, match="line 1"):
        D.RecordIOReader(rec)


def test_corrupt_jpegs_are_counted_and_fail_above_one_percent():
    good = formats.encode_jpeg(_faces(1)[0])
    bad = good[:50]  # truncated JPEG
    blobs = [good] * 199 + [bad]
    out, idx = formats.decode_many(blobs)  # 0.5 % corrupt: skipped and counted
    assert idx == [199] and out[199] is None and out[0].shape == (32, 32, 3)
    with pytest.raises(DataError, match=r"3 of 100 images .* corrupt"):
        formats.decode_many([good] * 97 + [b"not a jpeg"] * 3, what="toy")
    with pytest.raises(DataError, match="not a readable image"):
        formats.decode_image(b"\xff\xd8\xff garbage", what="x.jpg")


def test_lists_pairs_attributes_and_names(tmp_path):
    pairs = tmp_path / "pairs.txt"
    lines = ["2\t1"]
    for f in range(2):
        lines += [f"Ann_{f}\t1\t2", f"Bob_{f}\t1\tCid_{f}\t3"]
    pairs.write_text("\n".join(lines) + "\n")
    df = D.read_lfw_pairs(pairs)
    assert df["fold"].tolist() == [0, 0, 1, 1] and df["same"].tolist() == [True, False, True, False]
    assert df.loc[1, "name_b"] == "Cid_0" and df.loc[1, "num_b"] == 3
    pairs.write_text("2\t1\nAnn\t1\t2\n")
    with pytest.raises(DataError, match="truncated"):
        D.read_lfw_pairs(pairs)
    attr = tmp_path / "attr.txt"
    attr.write_text("2\nSmiling Eyeglasses\n000001.jpg 1 -1\n000002.jpg -1  1\n")
    a = D.read_celeba_attributes(attr)
    assert a["Smiling"].tolist() == [1, 0] and a["Eyeglasses"].tolist() == [0, 1]
    ident = tmp_path / "id.txt"
    ident.write_text("image identity\n000001.jpg 7\n000002.jpg 9\n")
    assert D.read_celeba_identities(ident)["identity"].tolist() == [7, 9]
    assert formats.parse_utkface_name("x/26_1_2_20170116.jpg.chip.jpg") == (26, 1, 2)
    assert formats.parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg") == (39, 1, -1)


def test_identity_folders_on_disk_and_in_tar(tmp_path):
    root = tmp_path / "faces"
    imgs = _faces(4)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for k, (ident, im) in enumerate(zip(["amy", "amy", "ben", "cat"], imgs, strict=False)):
            (root / ident).mkdir(parents=True, exist_ok=True)
            data = formats.encode_jpeg(im)
            (root / ident / f"{k}.jpg").write_bytes(data)
            info = tarfile.TarInfo(f"faces/{ident}/{k}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (tmp_path / "faces.tar").write_bytes(buf.getvalue())
    for ds in (D.LazyImageDataset.from_folder(root), D.LazyImageDataset.from_tar(tmp_path / "faces.tar")):
        assert len(ds) == 4 and ds.labels.tolist() == [0, 0, 1, 2]
        x, y, _ = ds[2]
        assert tuple(x.shape) == (3, 32, 32) and y == 1
    assert Path(formats.scan_image_folder(root)["path"].iloc[0]).parent.name == "amy"
