"""The index folder: what write_index writes, load_index reads back, and load_index refuses damaged files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mmfm.deploy import load_index, search, write_index
from mmfm.errors import UserError


def _unit(rows, dim, seed=0):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write(tmp_path, **kw):
    emb = _unit(5, 8)
    write_index(tmp_path / "idx", emb, [f"img{i}.png" for i in range(5)], model="M", pretrained=None,
                fingerprint="abc", **kw)
    return emb


def test_round_trip(tmp_path):
    emb = _write(tmp_path, texts=["a", "b"], text_embeddings=_unit(2, 8, 1))
    idx = load_index(tmp_path / "idx")
    np.testing.assert_array_equal(idx.image_embeddings, emb)
    np.testing.assert_array_equal(idx.text_embeddings, _unit(2, 8, 1))
    assert idx.paths == [f"img{i}.png" for i in range(5)] and idx.texts == ["a", "b"] and idx.meta["dim"] == 8
    assert not list((tmp_path / "idx").glob(".*"))   # no temporaries left behind


def test_search_is_exact_top_k_by_cosine():
    emb = _unit(50, 16)
    q = np.random.default_rng(3).standard_normal(16).astype(np.float32)
    hits = search(emb, q * 7.0, top_k=5)   # the query's length does not matter
    cos = emb @ (q / np.linalg.norm(q))
    assert [i for i, _ in hits] == list(np.argsort(-cos)[:5])
    np.testing.assert_allclose([s for _, s in hits], np.sort(cos)[::-1][:5], rtol=1e-6)
    assert len(search(emb, q, top_k=500)) == 50


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "meta.json").write_text("{nope"), "not valid JSON"),
    (lambda d: (d / "meta.json").write_text(json.dumps({"format": "other"})), "not an mmfm index"),
    (lambda d: np.save(d / "image_embeddings.npy", _unit(4, 8)), "meta.json says float32 (5, 8)"),
    (lambda d: np.save(d / "image_embeddings.npy", _unit(5, 8).astype(np.float64)), "float64"),
    (lambda d: (d / "image_embeddings.npy").write_bytes(b"\x93NUMPY garbage"), "not a .npy array"),
    (lambda d: (d / "image_embeddings.npy").unlink(), "missing"),
])
def test_damaged_index_is_refused_with_one_line(tmp_path, damage, message):
    _write(tmp_path)
    damage(tmp_path / "idx")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_index(tmp_path / "idx")


def test_embedding_and_export_restore_every_modules_own_mode(tmp_path):
    """Reporting on a model changes nothing: a tower kept in eval while the rest trains stays so after
    embedding images and texts and after an ONNX export (they used to restore only the top flag)."""
    import PIL.Image

    from mmfm import create_model, embed_images, embed_texts, export_onnx
    model = create_model("ViT-tiny-test")
    paths = []
    for i in range(2):
        PIL.Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    calls = [lambda: embed_images(model, paths, workers=0, progress=False),
             lambda: embed_texts(model, ["a red circle"]),
             lambda: export_onnx(model, tmp_path / "onnx")]
    for call in calls:
        model.train()
        model.visual.eval()
        call()
        assert model.training and model.text.training
        assert not any(m.training for m in model.visual.modules())


def test_search_selects_the_top_k_keeps_row_order_on_ties_and_never_ranks_a_damaged_row():
    emb = np.zeros((10, 2), dtype=np.float32)
    emb[:, 0] = [0.5, 1, 0.5, 0.9, 0.5, 0.5, 0.2, 0.5, 0.1, 0.3]
    emb[4] = np.nan                                  # a damaged row
    hits = search(emb, np.array([1.0, 0.0]), top_k=4)
    assert [i for i, _ in hits] == [1, 3, 0, 2]      # 0.5 four times: the first rows in order win the cut
    assert [i for i, _ in search(emb, np.array([1.0, 0.0]), top_k=10)][-1] == 4
    rng = np.random.default_rng(0)
    big = rng.standard_normal((5000, 8)).astype(np.float32)
    q = rng.standard_normal(8).astype(np.float32)
    cos = big @ (q / np.linalg.norm(q))
    assert [i for i, _ in search(big, q, 50)] == list(np.argsort(-cos, kind="stable")[:50])


def test_an_index_rewritten_and_interrupted_is_no_index_not_old_metadata_over_new_rows(tmp_path, monkeypatch):
    # Rewriting a folder: the new rows are written before the new meta.json. Had the old meta.json stayed until
    # then, an interruption in between would leave the old paths naming the new rows (same shape).
    from mmfm.deploy import index as index_module
    _write(tmp_path)
    real = index_module._save_npy

    def interrupted(path, array):
        real(path, array)
        if path.name == "text_embeddings.npy":
            raise KeyboardInterrupt
    monkeypatch.setattr(index_module, "_save_npy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_index(tmp_path / "idx", _unit(5, 8, seed=7), [f"new{i}.png" for i in range(5)], model="M",
                    pretrained=None, fingerprint="abc", texts=["a"], text_embeddings=_unit(1, 8))
    with pytest.raises(UserError, match="not an index"):
        load_index(tmp_path / "idx")
