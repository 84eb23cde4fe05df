"""`mmfm serve`'s JSON API (FastAPI's TestClient): the numbers of the commands, and bad input refused in one line."""
from __future__ import annotations

import io
import json
import threading

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("fastapi", reason="mmfm serve needs the serve extra: pip install 'mmfm[serve]'")
pytest.importorskip("python_multipart", reason="mmfm serve needs the serve extra: pip install 'mmfm[serve]'")
from fastapi.testclient import TestClient

from mmfm.cli import main
from mmfm.deploy import load_index
from mmfm.deploy.serve import build_app
from mmfm.errors import UserError

LABELS = ["a red circle", "a blue square", "a green star"]


@pytest.fixture(scope="module")
def loaded(served):
    """The models as `mmfm serve` loads them: from their folders."""
    from mmfm.frozen import load_frozen
    from mmfm.api import create_model
    return (create_model("ViT-tiny-test", pretrained=str(served.clip)).eval(), load_index(served.index),
            load_frozen(served.frozen))


@pytest.fixture(scope="module")
def client(loaded):
    clip, index, frozen = loaded
    return TestClient(build_app(clip, index=index, frozen=frozen, name="ViT-tiny-test",
                                caption_options={"max_new_tokens": 5}))


def _upload(path):
    with open(path, "rb") as f:
        return {"image": ("image.png", f.read(), "image/png")}


def test_classify_gives_mmfm_classifys_probabilities(served, client, capsys):
    for image in served.images[:2]:
        got = client.post("/api/classify", files=_upload(image), data={"labels": ", ".join(LABELS)})
        assert got.status_code == 200, got.text
        assert main(["classify", image, "--model", "ViT-tiny-test", "--pretrained", str(served.clip),
                     "--labels", ",".join(LABELS), "--json"]) == 0
        want = json.loads(capsys.readouterr().out)[0]["labels"]
        assert [x["label"] for x in got.json()["labels"]] == [x["label"] for x in want]
        np.testing.assert_allclose([x["probability"] for x in got.json()["labels"]],
                                   [x["probability"] for x in want], rtol=0, atol=1e-6)
        assert sum(x["probability"] for x in got.json()["labels"]) == pytest.approx(1.0, abs=1e-5)


def test_search_gives_mmfm_searchs_hits_with_thumbnails_of_the_index_only(served, client, capsys):
    got = client.get("/api/search", params={"q": "a red circle", "k": "4"})
    assert got.status_code == 200, got.text
    assert main(["search", str(served.index), "a red circle", "--top-k", "4", "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    hits = got.json()["hits"]
    assert got.json()["search"] == "exact" == client.get("/api/info").json()["index"]["search"]
    assert [(h["rank"], h["path"]) for h in hits] == [(w["rank"], w["path"]) for w in want]
    np.testing.assert_allclose([h["score"] for h in hits], [w["score"] for w in want], rtol=0, atol=1e-6)
    # The thumbnail of each hit is its own image (a 32-pixel shape enlarged), served as PNG.
    thumb = client.get(hits[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    img = PIL.Image.open(io.BytesIO(thumb.content))
    original = PIL.Image.open(hits[0]["path"]).convert("RGB")
    assert img.size == (256, 256)
    assert np.asarray(img.resize(original.size, PIL.Image.NEAREST)).mean() == pytest.approx(
        np.asarray(original).mean(), abs=8)


@pytest.mark.parametrize("url", ["/api/thumbnail/6", "/api/thumbnail/-1", "/api/thumbnail/1e3",
                                 "/api/thumbnail/..%2F..%2F..%2Fetc%2Fpasswd", "/api/thumbnail//etc/passwd",
                                 "/api/thumbnail?path=/etc/passwd", "/etc/passwd", "/api/../etc/passwd"])
def test_a_file_not_in_the_index_is_not_served(client, url):
    got = client.get(url)
    assert got.status_code in (404, 405), (url, got.status_code)
    assert b"root:" not in got.content


def test_caption_is_generate_captions(served, client, loaded):
    from mmfm.frozen.generate import caption
    got = client.post("/api/caption", files=_upload(served.images[0]))
    assert got.status_code == 200, got.text
    model, tok = loaded[2]
    assert got.json()["caption"] == caption(model, tok, [PIL.Image.open(served.images[0]).convert("RGB")],
                                            max_new_tokens=5)[0]


def _png(size, mode="RGB") -> bytes:
    out = io.BytesIO()
    PIL.Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("files, labels, status, message", [
    ({"image": ("x.png", b"not an image at all", "image/png")}, "a, b", 400, "not an image"),
    ({"image": ("x.png", _png((40, 40))[:60], "image/png")}, "a, b", 400, "could not be decoded"),
    ({"image": ("x.png", b"", "image/png")}, "a, b", 400, "no image uploaded"),
    (None, "a, b", 400, "no image uploaded"),
    ({"image": ("x.png", _png((40, 40)), "image/png")}, "", 400, "at least two"),
    ({"image": ("x.png", _png((40, 40)), "image/png")}, " , ,", 400, "at least two"),
    ({"image": ("x.png", _png((40, 40)), "image/png")}, "only one", 400, "at least two"),
    ({"image": ("big.png", _png((8000, 6000), mode="1"), "image/png")}, "a, b", 400, "8000x6000 pixels"),
])
def test_bad_upload_or_labels_is_4xx_with_one_line(client, files, labels, status, message):
    got = client.post("/api/classify", files=files or {"other": ("x", b"", "text/plain")}, data={"labels": labels})
    assert got.status_code == status, got.text
    error = got.json()["error"]
    assert message in error and "\n" not in error


def test_an_upload_over_the_limit_is_refused_before_it_is_decoded(loaded):
    client = TestClient(build_app(loaded[0], max_upload_bytes=1000))
    got = client.post("/api/classify", files={"image": ("x.png", b"\0" * 5000, "image/png")}, data={"labels": "a, b"})
    assert got.status_code == 413 and "over" in got.json()["error"]
    big = client.post("/api/classify", files={"image": ("x.png", b"\0" * 200_000, "image/png")}, data={"labels": "a,b"})
    assert big.status_code == 413 and "over" in big.json()["error"]     # refused from its Content-Length


@pytest.mark.parametrize("params, message", [({"q": "  "}, "empty query"), ({"q": "a", "k": "0"}, "from 1 to"),
                                             ({"q": "a", "k": "many"}, "from 1 to")])
def test_bad_search_is_400_with_one_line(client, params, message):
    got = client.get("/api/search", params=params)
    assert got.status_code == 400 and message in got.json()["error"]


def test_without_index_or_frozen_model_the_page_says_how_to_add_them(loaded):
    client = TestClient(build_app(loaded[0], name="ViT-tiny-test"))
    page = client.get("/").text
    assert 'id="search-on" hidden' in page and 'id="search-off" >' in page and "--index INDEX" in page
    assert 'id="caption-on" hidden' in page and "--frozen DIR" in page
    assert client.get("/api/search", params={"q": "a"}).status_code == 404
    got = client.post("/api/caption", files={"image": ("x.png", _png((40, 40)), "image/png")})
    assert got.status_code == 404 and "--frozen DIR" in got.json()["error"]
    assert client.get("/api/thumbnail/0").status_code == 404
    assert client.get("/api/info").json() == {"model": "ViT-tiny-test", "precision": "fp32", "index": None,
                                              "frozen": False}


def test_the_page_escapes_the_model_name(loaded):
    page = TestClient(build_app(loaded[0], name="<script>alert(1)</script>")).get("/").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page


def test_an_index_built_by_another_model_is_refused(served, loaded, capsys):
    from mmfm.api import create_model
    with pytest.raises(UserError, match="not by the model being served"):
        build_app(create_model("ViT-tiny-test").eval(), index=loaded[1])
    # The command refuses it in one line before it listens (random weights: another model).
    assert main(["serve", "--model", "ViT-tiny-test", "--index", str(served.index), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "random weights" in err[0] and "not by the model being served" in err[1]
    assert main(["serve", "--model", "ViT-tiny-test", "--index", str(served.root / "nothing")]) == 2
    assert "is not an index" in capsys.readouterr().err


def test_concurrent_requests_get_their_own_answers_and_leave_the_model_unchanged(served, loaded, model_state):
    clip, index, frozen = loaded
    before = model_state(clip)
    client = TestClient(build_app(clip, index=index, frozen=frozen, caption_options={"max_new_tokens": 3}))
    files = [_upload(p) for p in served.images[:4]]
    alone = [client.post("/api/classify", files=f, data={"labels": ", ".join(LABELS)}).json() for f in files]
    together = [None] * len(files)

    def ask(i):
        together[i] = client.post("/api/classify", files=files[i], data={"labels": ", ".join(LABELS)}).json()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    client.get("/api/search", params={"q": "a green star"})
    client.post("/api/caption", files=files[0])
    before.assert_same(clip)


def test_without_the_serve_extra_the_command_says_what_to_install(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", "--model", "ViT-tiny-test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mmfm serve: error: mmfm serve needs uvicorn: pip install 'mmfm[serve]'"


def test_every_refusal_has_the_same_one_line_shape(client):
    # The page shows `error` of any refused request; FastAPI's own 404/405 say `detail` unless mapped.
    for got in (client.get("/no/such/page"), client.get("/api/classify"), client.get("/api/thumbnail/x")):
        assert got.status_code in (404, 405) and isinstance(got.json().get("error"), str), got.text


def test_a_low_precision_model_classifies_and_an_fp32_index_is_refused_with_it(served, capsys):
    from mmfm.api import create_model
    int8 = create_model("ViT-tiny-test", pretrained=str(served.clip), precision="int8").eval()
    got = TestClient(build_app(int8)).post("/api/classify", files=_upload(served.images[0]),
                                           data={"labels": ", ".join(LABELS)})
    assert got.status_code == 200 and sum(x["probability"] for x in got.json()["labels"]) == pytest.approx(1, abs=1e-5)
    assert main(["serve", "--model", "ViT-tiny-test", "--pretrained", str(served.clip), "--precision", "int8",
                 "--index", str(served.index)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision fp32" in err


def test_search_goes_through_the_indexs_approximate_graph_when_it_has_one(loaded, tmp_path):
    pytest.importorskip("faiss")
    from mmfm.deploy import write_index
    clip, index, _ = loaded
    m = index.meta
    root = write_index(tmp_path / "ann", index.image_embeddings, index.paths, model=m["model"],
                       pretrained=m["pretrained"], fingerprint=m["fingerprint"], ann=True)
    exact = TestClient(build_app(clip, index=index))
    approx = TestClient(build_app(clip, index=load_index(root)))
    assert approx.get("/api/info").json()["index"]["search"] == "hnsw"
    assert "approximate search (HNSW)" in approx.get("/").text and "approximate" not in exact.get("/").text
    a = approx.get("/api/search", params={"q": "a red circle", "k": "3"}).json()
    e = exact.get("/api/search", params={"q": "a red circle", "k": "3"}).json()
    assert a["search"] == "hnsw, efSearch 256" and e["search"] == "exact"
    assert [h["path"] for h in a["hits"]] == [h["path"] for h in e["hits"]]   # a small index: all of it is found
