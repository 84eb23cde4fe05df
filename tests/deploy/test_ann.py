"""The approximate index (mmfm.deploy.ann): recall against exact search, and a graph trusted only while it still
describes the index's rows."""
import json

import numpy as np
import pytest

from mmfm.deploy import load_ann, load_index, search, search_index, write_index
from mmfm.deploy.ann import ANN_FILE
from mmfm.errors import UserError

faiss = pytest.importorskip("faiss")


def _clustered(n, dim=64, clusters=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write(root, rows, ann):
    return write_index(root, rows, [f"img{i}.png" for i in range(len(rows))], model="ViT-tiny-test",
                       pretrained="p", fingerprint="f", ann=ann)


@pytest.fixture(scope="module")
def ann_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("ann") / "idx"
    _write(root, _clustered(3000), ann=True)
    return root


def test_graph_finds_the_exact_top_10_and_reports_exact_cosines(ann_index):
    index = load_index(ann_index)
    graph = load_ann(index)
    assert index.meta["ann"] == {"kind": "hnsw", "file": ANN_FILE, "m": 32, "ef_construction": 80, "rows": 3000}
    queries = _clustered(50, seed=1)
    found = []
    for q in queries:
        hits, how = search_index(index, q, 10, graph)
        exact = search(index.image_embeddings, q, 10)
        assert how == "hnsw, efSearch 256"
        rows = [i for i, _ in hits]
        np.testing.assert_allclose([s for _, s in hits], index.image_embeddings[rows] @ q, rtol=1e-6)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        found.append(len(set(rows) & {i for i, _ in exact}) / 10)
    assert np.mean(found) >= 0.95
    hits, how = search_index(index, queries[0], 10)      # no graph: exact
    assert how == "exact" and hits == search(index.image_embeddings, queries[0], 10)


def test_rewriting_without_ann_removes_the_old_graph(tmp_path):
    _write(tmp_path / "idx", _clustered(200), ann=True)
    assert (tmp_path / "idx" / ANN_FILE).is_file()
    _write(tmp_path / "idx", _clustered(200, seed=5), ann=False)
    assert not (tmp_path / "idx" / ANN_FILE).exists()
    assert "ann" not in json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert load_ann(load_index(tmp_path / "idx")) is None


def _swap_rows(root):
    rows = np.load(root / "image_embeddings.npy")
    np.save(root / "image_embeddings.npy", rows[::-1].copy())


def _meta(root, **change):
    meta = json.loads((root / "meta.json").read_text())
    meta["ann"].update(change)
    (root / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (_swap_rows, "built from other embeddings"),                            # same shape, other rows
    (lambda r: (r / ANN_FILE).write_bytes(b"IHNf" + bytes(100)), "cannot be read"),
    (lambda r: (r / ANN_FILE).write_bytes(b"junk" * 100), "is not the HNSW graph"),
    (lambda r: (r / ANN_FILE).write_bytes(b"IHNf" + bytes(40 << 20)), "is not the HNSW graph"),   # too big to read
    (lambda r: (r / ANN_FILE).unlink(), "is missing"),
    (lambda r: _meta(r, kind="ivf"), "not an HNSW graph mmfm wrote"),
])
def test_a_graph_that_does_not_describe_the_rows_is_refused(tmp_path, damage, message):
    root = tmp_path / "idx"
    _write(root, _clustered(300), ann=True)
    damage(root)
    with pytest.raises(UserError, match=message) as e:
        load_ann(load_index(root))
    assert "--exact" in str(e.value) and "\n" not in str(e.value)
