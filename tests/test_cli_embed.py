"""``mmfm embed`` and ``mmfm search``: a folder of images into an index, searched by text or image (issue 18)."""
from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from mmfm.checkpoints import save_pretrained
from mmfm.cli import main
from mmfm.data import get_dataset
from mmfm.data.transforms import image_transform
from mmfm.deploy import load_index
from mmfm.api import create_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A random ViT-tiny-test saved as a model folder, and 7 shapes PNGs (two in a subfolder) plus a broken file."""
    root = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").eval()
    save_pretrained(model, root / "model")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i, sample in enumerate(get_dataset("shapes", split="test", size=7)):
        sample.image.save(images / ("sub" if i >= 5 else "") / f"shape{i}.png")
    (images / "broken.png").write_bytes(b"not a png at all")
    return model, root / "model", images


def _direct(model, paths):
    tf = image_transform(model.image_size)
    with torch.no_grad():
        return model.encode_image(torch.stack([tf(PIL.Image.open(p).convert("RGB")) for p in paths]),
                                  normalize=True).numpy()


@pytest.fixture(scope="module")
def index(data, tmp_path_factory):
    model, folder, images = data
    out = tmp_path_factory.mktemp("index") / "idx"
    texts = out.parent / "captions.txt"
    texts.write_text("a red circle\n\na blue square\n")
    assert main(["embed", str(images), "--model", "ViT-tiny-test", "--pretrained", str(folder), "--out", str(out),
                 "--texts", str(texts), "--batch-size", "3", "--workers", "2", "--threads", "1"]) == 0
    return out


def test_embed_writes_the_models_normalised_embeddings_with_paths_and_skips_unreadable(data, index, capfd):
    model, folder, images = data
    idx = load_index(index)
    want_paths = sorted(str(p) for p in images.rglob("*.png") if p.name != "broken.png")
    assert sorted(idx.paths) == want_paths and len(idx.paths) == 7
    assert idx.image_embeddings.dtype == np.float32
    np.testing.assert_allclose(idx.image_embeddings, _direct(model, idx.paths), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(idx.image_embeddings, axis=1), 1, atol=1e-5)
    with torch.no_grad():
        txt = model.encode_text(model.get_tokenizer()(["a red circle", "a blue square"]), normalize=True).numpy()
    assert idx.texts == ["a red circle", "a blue square"]
    np.testing.assert_allclose(idx.text_embeddings, txt, atol=1e-5)
    from mmfm.eval import model_fingerprint
    meta = json.loads((index / "meta.json").read_text())
    assert meta["model"] == "ViT-tiny-test" and meta["pretrained"] == str(folder.resolve())
    assert meta["fingerprint"] == model_fingerprint(model) and meta["dim"] == 32
    assert [s["path"] for s in meta["skipped"]] == [str(images / "broken.png")]


def test_embed_names_the_unreadable_image_on_stderr_and_records_absolute_paths(data, tmp_path, capsys,
                                                                              monkeypatch):
    _, folder, images = data
    monkeypatch.chdir(images)   # relative paths on the command line; the index must not depend on the cwd
    assert main(["embed", "broken.png", "shape0.png", "--model", "ViT-tiny-test",
                 "--pretrained", str(folder), "--out", str(tmp_path / "i"), "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert f"skipped {images / 'broken.png'}" in captured.err
    assert "1 images embedded" in captured.out and load_index(tmp_path / "i").paths == [str(images / "shape0.png")]


def test_python_api_equals_the_model(data):
    import mmfm
    model, _, images = data
    paths = sorted(str(p) for p in images.glob("shape*.png"))
    done = mmfm.embed_images(model, paths, batch_size=2, workers=0)
    assert done.paths == paths and done.skipped == []
    np.testing.assert_allclose(done.embeddings, _direct(model, paths), atol=1e-5)


def test_search_text_returns_the_exact_top_k(data, index, capsys):
    model, _, _ = data
    assert main(["search", str(index), "a red circle", "--top-k", "4", "--json", "--threads", "1"]) == 0
    hits = json.loads(capsys.readouterr().out)
    idx = load_index(index)
    with torch.no_grad():
        q = model.encode_text(model.get_tokenizer()(["a red circle"]), normalize=True).numpy()[0]
    scores = _direct(model, idx.paths) @ q
    order = np.argsort(-scores)[:4]
    assert [h["path"] for h in hits] == [idx.paths[i] for i in order]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4] and {h["search"] for h in hits} == {"exact"}
    np.testing.assert_allclose([h["score"] for h in hits], scores[order], atol=1e-5)


def test_embed_with_ann_builds_a_graph_that_search_uses_unless_exact(data, tmp_path, capsys):
    pytest.importorskip("faiss")
    _, folder, images = data
    out = tmp_path / "idx"
    assert main(["embed", str(images), "--model", "ViT-tiny-test", "--pretrained", str(folder), "--out", str(out),
                 "--workers", "0", "--threads", "1", "--ann"]) == 0
    assert "with an HNSW graph" in capsys.readouterr().out
    assert load_index(out).meta["ann"]["kind"] == "hnsw"
    runs = {}
    for extra in ([], ["--exact"]):
        assert main(["search", str(out), "a red circle", "--top-k", "7", "--json", "--threads", "1", *extra]) == 0
        runs[tuple(extra)] = json.loads(capsys.readouterr().out)
    assert {h["search"] for h in runs[()]} == {"hnsw, efSearch 256"}
    assert {h["search"] for h in runs[("--exact",)]} == {"exact"}
    # 7 rows: the graph's top 7 is all of them, in the exact order with the exact cosines
    assert [(h["path"], round(h["score"], 6)) for h in runs[()]] == \
        [(h["path"], round(h["score"], 6)) for h in runs[("--exact",)]]
    assert main(["search", str(out), "a red circle", "--ef-search", "512", "--threads", "1"]) == 0
    assert "approximate: hnsw, efSearch 512; --exact ranks every row" in capsys.readouterr().out
    assert main(["search", str(out), "a red circle", "--exact", "--ef-search", "512"]) == 2
    assert "--ef-search tunes an approximate graph" in capsys.readouterr().err


def test_search_by_image_finds_itself_first_and_draws_a_contact_sheet(data, index, tmp_path, capsys):
    _, _, images = data
    query = images / "sub" / "shape6.png"
    sheet = tmp_path / "hits.png"
    assert main(["search", str(index), "--image", str(query), "--top-k", "3", "--sheet", str(sheet)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "cosine", "path"] and len(lines) == 4
    rank, score, path = lines[1].split(maxsplit=2)
    assert rank == "1" and path == str(query) and float(score) == pytest.approx(1.0, abs=1e-4)
    with PIL.Image.open(sheet) as img:
        assert img.format == "PNG" and img.width >= 3 * 100


def test_search_refuses_an_index_whose_model_changed(data, index, tmp_path, capsys):
    import shutil
    model, folder, _ = data
    changed = tmp_path / "model"
    other = create_model("ViT-tiny-test").eval()   # other random weights under the same path
    save_pretrained(other, changed)
    moved = tmp_path / "idx"
    shutil.copytree(index, moved)
    meta = json.loads((moved / "meta.json").read_text())
    meta["pretrained"] = str(changed)
    (moved / "meta.json").write_text(json.dumps(meta))
    assert main(["search", str(moved), "a red circle"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not the model that built" in err and len(err.splitlines()) == 1


def test_search_refuses_an_index_of_random_weights(data, tmp_path, capsys):
    _, _, images = data
    assert main(["embed", str(images / "shape0.png"), "--model", "ViT-tiny-test", "--out", str(tmp_path / "i"),
                 "--workers", "0"]) == 0
    assert "random weights" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "i"), "a red circle"]) == 2
    err = capsys.readouterr().err.strip()
    assert "built from random weights" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["embed", "missing_dir", "--out", "{tmp}/i"], "missing_dir does not exist"),
    (["embed", "{images}", "--out", "{tmp}/i", "--texts", "{tmp}/none.txt"], "--texts"),
    (["embed", "{tmp}", "--out", "{tmp}/i"], "no images"),
    (["search", "{tmp}", "a query"], "is not an index"),
    (["search", "{index}"], "give a text query or --image"),
    (["search", "{index}", "q", "--image", "x.png"], "give a text query or --image"),
    (["search", "{index}", "--image", "{tmp}/missing.png"], "--image"),
])
def test_bad_input_is_one_line_and_exit_2(data, index, tmp_path, capsys, argv, message):
    _, folder, images = data
    argv = [a.format(tmp=tmp_path, images=images, index=index) for a in argv]
    if argv[0] == "embed":
        argv += ["--model", "ViT-tiny-test", "--pretrained", str(folder), "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_embed_ann_without_faiss_says_how_to_install_it_before_any_work(data, tmp_path, monkeypatch, capsys):
    import sys
    _, folder, images = data
    monkeypatch.setitem(sys.modules, "faiss", None)     # import faiss now fails, as where it is not installed
    out = tmp_path / "idx"
    assert main(["embed", str(images), "--model", "ViT-tiny-test", "--pretrained", str(folder), "--out", str(out),
                 "--workers", "0", "--ann"]) == 2
    assert "pip install 'mmfm[ann]'" in capsys.readouterr().err
    assert not out.exists()
