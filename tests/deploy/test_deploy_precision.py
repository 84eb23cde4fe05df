"""``--precision`` on `mmfm classify`, `mmfm embed`, `mmfm search` and `mmfm serve` (issue 18): the fast CPU paths of
``create_model(precision=...)`` from the command line, recorded in an index and kept consistent with its queries."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mmfm.cli import main
from mmfm.deploy import load_index

LABELS = "a red circle, a blue square, a green triangle, a yellow star"
# bf16 rounds weights to 8 significant bits (relative error 2^-9), int8 the Linear layers to 256 levels per output
# channel: unit embeddings move by a few 1e-3 in cosine, the logits (temperature e^2 = 7.4) by a few 1e-2, and a
# probability by at most a quarter of that (dp/dlogit = p(1-p) <= 1/4). Measured on this model and these 6 images:
# 0.003 (bf16), 0.006 (int8); 0.02 leaves 3x, and stays under half the fp32 top-1/top-2 margins (asserted below).
PROB_TOL = 0.02


def _classify(served, capsys, *argv) -> tuple[list[dict], str]:
    """The --json rows, and what went to stderr."""
    assert main(["classify", *served.images, "--model", "ViT-tiny-test", "--pretrained", str(served.clip),
                 "--labels", LABELS, "--json", "--threads", "1", *argv]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err.strip()


def _probabilities(rows) -> np.ndarray:
    """[images, labels] in label order, whatever order each row lists them in."""
    return np.array([[d["probability"] for d in sorted(row["labels"], key=lambda d: d["label"])] for row in rows])


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_classify_at_low_precision_agrees_with_fp32_and_says_its_precision(served, capsys, precision):
    fp32, low = _classify(served, capsys)[0], _classify(served, capsys, "--precision", precision)[0]
    assert {row["precision"] for row in fp32} == {"fp32"} and {row["precision"] for row in low} == {precision}
    want, got = _probabilities(fp32), _probabilities(low)
    margins = np.diff(np.sort(want, axis=1)[:, -2:], axis=1)
    assert margins.min() > 2 * PROB_TOL   # so equal top-1 is a test of the precision, not of luck
    assert (got.argmax(1) == want.argmax(1)).all()
    np.testing.assert_allclose(got, want, atol=PROB_TOL)
    assert not np.array_equal(got, want)   # the low-precision path did run


def test_the_tables_name_a_low_precision(served, bf16_index, capsys):
    assert main(["classify", served.images[0], "--model", "ViT-tiny-test", "--pretrained", str(served.clip),
                 "--labels", LABELS, "--precision", "int8", "--threads", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{served.images[0]}  (int8)"
    assert main(["search", str(bf16_index), "a red circle", "--threads", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("path  (bf16 query and index)")


def test_fp16_on_a_cpu_is_one_line_naming_the_fix(served, capsys):
    assert main(["classify", served.images[0], "--model", "ViT-tiny-test", "--labels", "a, b",
                 "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision fp16 needs a CUDA GPU" in err and "bf16 or int8" in err


def test_bf16_on_a_cpu_without_native_bf16_is_one_note_not_a_python_warning(served, capsys, monkeypatch, recwarn):
    import mmfm.models.precision as precision
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    rows, err = _classify(served, capsys, "--precision", "bf16")
    assert rows[0]["precision"] == "bf16"
    assert "no native bf16" in err and len(err.splitlines()) == 1
    assert not [w for w in recwarn if "bf16" in str(w.message)]


@pytest.fixture(scope="module")
def bf16_index(served, tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "index"
    assert main(["embed", *served.images, "--model", "ViT-tiny-test", "--pretrained", str(served.clip),
                 "--out", str(out), "--workers", "0", "--threads", "1", "--precision", "bf16"]) == 0
    return out


def test_embed_records_its_precision_and_search_embeds_the_query_the_same_way(served, bf16_index, capsys):
    from mmfm.api import create_model
    from mmfm.deploy import embed_images, embed_texts, search
    index = load_index(bf16_index)
    assert index.meta["precision"] == "bf16" and index.meta["version"] == 2   # older mmfm: "upgrade", not garbage
    bf16 = create_model("ViT-tiny-test", pretrained=str(served.clip), precision="bf16").eval()
    np.testing.assert_array_equal(index.image_embeddings, embed_images(bf16, served.images, workers=0).embeddings)
    capsys.readouterr()
    assert main(["search", str(bf16_index), "a red circle", "--top-k", "3", "--json", "--threads", "1"]) == 0
    hits = json.loads(capsys.readouterr().out)
    want = search(index.image_embeddings, embed_texts(bf16, ["a red circle"])[0], 3)
    assert [(h["path"], h["precision"]) for h in hits] == [(index.paths[i], "bf16") for i, _ in want]
    np.testing.assert_allclose([h["score"] for h in hits], [s for _, s in want], rtol=1e-6)


@pytest.mark.parametrize("argv", [["search", "{index}", "a red circle", "--precision", "fp32"],
                                  ["serve", "--model", "ViT-tiny-test", "--index", "{index}", "--precision", "int8"]])
def test_a_query_at_another_precision_than_the_index_is_refused_in_one_line(served, bf16_index, capsys, argv):
    pytest.importorskip("fastapi") if argv[0] == "serve" else None
    argv = [a.replace("{index}", str(bf16_index)) for a in argv]
    assert main(argv + ["--pretrained", str(served.clip)] * (argv[0] == "serve")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds bf16 embeddings" in err and "--precision bf16" in err


def test_the_app_refuses_an_index_of_another_precision_and_serves_one_of_its_own(served, bf16_index):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mmfm.api import create_model
    from mmfm.deploy.serve import build_app
    from mmfm.errors import UserError
    index = load_index(bf16_index)
    with pytest.raises(UserError, match="holds bf16 embeddings .* --precision bf16"):
        build_app(create_model("ViT-tiny-test", pretrained=str(served.clip)).eval(), index=index)
    bf16 = create_model("ViT-tiny-test", pretrained=str(served.clip), precision="bf16").eval()
    client = TestClient(build_app(bf16, index=index))
    got = client.get("/api/search", params={"q": "a red circle", "k": 2})
    assert got.status_code == 200 and len(got.json()["hits"]) == 2
    assert client.get("/api/info").json()["precision"] == "bf16"     # the page's numbers say what made them


def test_an_index_from_before_precision_was_recorded_reads_as_fp32(served, tmp_path, capsys):
    meta_path = served.index / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["version"] == 1 and meta["precision"] == "fp32"   # fp32 indexes stay readable by older mmfm
    old = tmp_path / "old"
    old.mkdir()
    for name in ("image_embeddings.npy",):
        (old / name).write_bytes((served.index / name).read_bytes())
    del meta["precision"]
    (old / "meta.json").write_text(json.dumps(meta))
    assert load_index(old).meta["precision"] == "fp32"
    assert main(["search", str(old), "a red circle", "--top-k", "2", "--json", "--threads", "1"]) == 0
    assert {h["precision"] for h in json.loads(capsys.readouterr().out)} == {"fp32"}


def test_an_index_naming_an_unknown_precision_is_refused(served, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "image_embeddings.npy").write_bytes((served.index / "image_embeddings.npy").read_bytes())
    meta = json.loads((served.index / "meta.json").read_text())
    (bad / "meta.json").write_text(json.dumps({**meta, "version": 2, "precision": "fp8"}))
    assert main(["search", str(bad), "a red circle"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "precision 'fp8'" in err


def test_the_clis_precision_choices_are_the_ones_an_index_can_record():
    """cli.py keeps its own list (importing mmfm.deploy would load torch before argparse runs): the two agree."""
    from mmfm.cli import PRECISION_CHOICES
    from mmfm.deploy.index import PRECISIONS
    assert PRECISION_CHOICES == list(PRECISIONS)


def _copy_index(src, dst, **meta_changes):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    meta = json.loads((dst / "meta.json").read_text())
    meta.update(meta_changes)
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("command", ["search", "serve"])
def test_an_fp16_index_on_a_cpu_names_the_index_not_a_flag_never_passed(served, bf16_index, tmp_path, capsys, command):
    # An fp16 index (made on a GPU) queried on a CPU: the precision came from the index, so the message must
    # say so; "--precision fp16 needs a CUDA GPU" named a flag the user never typed.
    if command == "serve":
        pytest.importorskip("fastapi")
    index = _copy_index(bf16_index, tmp_path / "fp16", precision="fp16")
    argv = (["search", str(index), "a red circle"] if command == "search" else
            ["serve", "--model", "ViT-tiny-test", "--pretrained", str(served.clip), "--index", str(index)])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"index {index} holds fp16 embeddings" in err and "--device cuda" in err
    assert "--precision fp16" not in err


def test_an_int8_index_from_a_cpu_of_another_kind_says_so_not_weights_changed(served, tmp_path, capsys, monkeypatch):
    # int8 layers follow the CPU (8-bit activations with VNNI, 7-bit without): the same weights give another
    # fingerprint on the other kind of CPU, and "its weights changed" sent the user after the wrong fix.
    import mmfm.models.precision as precision
    monkeypatch.setattr(precision, "cpu_has_vnni", lambda: True)
    out = tmp_path / "int8"
    assert main(["embed", *served.images, "--model", "ViT-tiny-test", "--pretrained", str(served.clip),
                 "--out", str(out), "--workers", "0", "--threads", "1", "--precision", "int8"]) == 0
    assert load_index(out).meta["int8_layers"].startswith("8-bit activations")
    assert main(["search", str(out), "a red circle", "--threads", "1"]) == 0     # same kind of CPU: searchable
    capsys.readouterr()
    monkeypatch.setattr(precision, "cpu_has_vnni", lambda: False)
    assert main(["search", str(out), "a red circle", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "7-bit activations" in err and "without VNNI" in err
    assert "rebuild the index here" in err and "weights changed" not in err
    # the field is read from an untrusted file and printed: anything but a string is refused when loading
    from mmfm.errors import UserError
    with pytest.raises(UserError, match="int8_layers"):
        load_index(_copy_index(out, tmp_path / "bad", int8_layers={"x": 1}))
