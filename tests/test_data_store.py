"""Manifests, data roots, verified files, cache and safe tar extraction (facestudy.data.store)."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from facestudy.data import store
from facestudy.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _write_manifest(folder: Path, name: str, files: list[dict], **extra) -> Path:
    import yaml

    doc = {"name": name, "title": f"test {name}", "kind": "dataset", "description": "a test dataset",
           "source": "made by the test", "licence": "CC0", "obtain": "the test itself", "files": files, **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A data root with one file, a manifest folder describing it and an empty cache."""
    root, mdir, cache = tmp_path / "root", tmp_path / "manifests", tmp_path / "cache"
    (root / "toy").mkdir(parents=True)
    mdir.mkdir()
    payload = b"hello faces" * 100
    (root / "toy" / "data.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    _write_manifest(mdir, "toy", [{"path": "toy/data.bin", "sha256": sha, "size": len(payload),
                                   "description": "bytes"}])
    monkeypatch.setenv("FACESTUDY_DATA", str(root))
    monkeypatch.setenv("FACESTUDY_MANIFESTS", str(mdir))
    monkeypatch.setenv("FACESTUDY_CACHE", str(cache))
    store._MANIFEST_CACHE.clear()
    store._MEMO.clear()
    yield {"root": root, "mdir": mdir, "cache": cache, "sha": sha, "payload": payload}
    store._MANIFEST_CACHE.clear()


def test_repo_manifests_parse_and_cover_shared_data():
    ms = {p.stem: store.parse_manifest(p) for p in sorted((REPO / "data_manifests").glob("*.yaml"))}
    for name in ("lfw", "celeba10k", "celeba_id299", "utkface", "mtcnn", "small_lfw_bin", "insightface_bins",
                 "train_rec", "fr_checkpoints", "mobilefacenet_ms1m", "mobilefacenet_casia"):
        assert name in ms, name
    listed = {f["path"]: f["sha256"] for m in ms.values() for f in m["files"]}
    sums = Path("/work/shared/data/SHA256SUMS")
    if sums.exists():  # every mirrored file has a manifest entry with the same sha256
        for line in sums.read_text().splitlines():
            sha, path = line.split()
            assert listed.get(path.removeprefix("./")) == sha, path
    bins = [f["path"] for f in ms["insightface_bins"]["files"]]
    assert {"insightface_bins/lfw.bin", "insightface_bins/agedb_30.bin"} <= set(bins)
    assert ms["insightface_bins"]["user_supplied"] and all(f["optional"] for f in ms["insightface_bins"]["files"])


def test_bad_manifest_names_file_and_key(tmp_path):
    p = _write_manifest(tmp_path, "broken", [{"path": "x.bin"}])  # files[0] lacks description
    with pytest.raises(DataError, match=r"broken\.yaml.*files\[0\]\.description"):
        store.parse_manifest(p)
    q = tmp_path / "nolicence.yaml"
    q.write_text("name: nolicence\ntitle: t\nkind: dataset\ndescription: d\nsource: s\nobtain: o\nfiles: []\n")
    with pytest.raises(DataError, match=r"nolicence\.yaml lacks the key 'licence'"):
        store.parse_manifest(q)
    r = tmp_path / "bad.yaml"
    r.write_text("name: [unclosed\n")
    with pytest.raises(DataError, match=r"bad\.yaml is not valid YAML"):
        store.parse_manifest(r)
    s = _write_manifest(tmp_path, "badsha", [{"path": "x", "description": "d", "sha256": "XYZ"}])
    with pytest.raises(DataError, match=r"files\[0\]\.sha256"):
        store.parse_manifest(s)


def test_locate_verifies_once_and_remembers(world):
    p = store.locate("toy")
    assert p == world["root"] / "toy" / "data.bin"
    db = json.loads((world["cache"] / "verified.json").read_text())
    assert list(db.values()) == [world["sha"]]
    assert store.available("toy")
    # a recorded hash is reused: poison the record and locate must trust it (no re-hash of unchanged files)
    key = next(iter(db))
    (world["cache"] / "verified.json").write_text(json.dumps({key: "0" * 64}))
    store._MEMO.clear()  # a new process: only the record on disk
    with pytest.raises(DataError, match="0{64}"):
        store.locate("toy")


def test_hash_mismatch_is_refused_with_both_hashes(world):
    (world["root"] / "toy" / "data.bin").write_bytes(b"tampered" * 10)
    with pytest.raises(DataError) as e:
        store.locate("toy")
    msg = str(e.value)
    assert world["sha"] in msg and hashlib.sha256(b"tampered" * 10).hexdigest() in msg
    with pytest.raises(DataError, match=r"damaged: it has 80 bytes but the manifest says 1,100"):
        store.available("toy")  # size differs from the manifest: damaged, never "absent"


def test_missing_file_message_is_actionable(world, tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_DATA", str(tmp_path / "empty_root"))
    with pytest.raises(DataError) as e:
        store.locate("toy")
    msg = str(e.value)
    for part in ("'toy'", "toy/data.bin", world["sha"], "the test itself", "FACESTUDY_DATA"):
        assert part in msg, part
    assert not store.available("toy")
    with pytest.raises(DataError, match="known: toy"):
        store.manifest("nope")


def test_several_roots_are_searched_in_order(world, tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_DATA", f"{tmp_path / 'first'}:{world['root']}")
    assert store.roots()[0] == tmp_path / "first"
    assert store.locate("toy").parent.parent == world["root"]


def _tar_with(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def test_safe_extract_refuses_traversal(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.tar"
    bad.write_bytes(_tar_with({"ok/a.txt": b"a", "../escape.txt": b"evil"}))
    with pytest.raises(DataError, match=r"\.\./escape\.txt.*refused"):
        store.safe_extract(bad, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()
    link = tmp_path / "link.tar"
    link.write_bytes(_tar_with({"ok/a.txt": b"a"}, links={"ok/pw": "/etc/passwd"}))
    with pytest.raises(DataError, match="links are not allowed"):
        store.safe_extract(link, tmp_path / "out2")
    good = tmp_path / "good.tar"
    good.write_bytes(_tar_with({"d/x.txt": b"x", "d/y.txt": b"yy"}))
    out = store.safe_extract(good, tmp_path / "out3")
    assert (out / "d" / "y.txt").read_bytes() == b"yy"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out3")] == []  # no temp left
    with store.TarReader(good) as r:
        assert r.names() == ["d/x.txt", "d/y.txt"] and r.read("d/x.txt") == b"x"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "entry.npz"
    with pytest.raises(RuntimeError):
        with store.atomic_path(target) as tmp:
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    store.atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole" and len(list(tmp_path.iterdir())) == 1


def test_book_page_is_generated_from_the_manifests():
    from facestudy.data.docs import render_book_page

    page = (REPO / "book" / "data.md").read_text()
    assert page == render_book_page(), "book/data.md is stale: run python -m facestudy.data.docs"
    assert "celeba10k" in page and "insightface_bins/agedb_30.bin" in page
