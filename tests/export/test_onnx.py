"""ONNX export (issue 18): both encoders under onnxruntime equal mmfm's embeddings to 1e-4, any batch size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mmfm
from mmfm.checkpoints import save_pretrained
from mmfm.cli import main
from mmfm.api import create_model

ort = pytest.importorskip("onnxruntime")


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _check_equal(model, paths, captions):
    image, text = _session(paths["image"]), _session(paths["text"])
    ids = model.get_tokenizer()(captions)
    for n in (1, 5):   # a batch size other than the export's
        pixels = torch.randn(n, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = model.encode_image(pixels)
        got = image.run(None, {"pixel_values": pixels.numpy()})[0]
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    with torch.no_grad():
        want = model.encode_text(ids)
    got = text.run(None, {"input_ids": ids.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


CAPTIONS = ["a", "a photo of a small red circle at the top", "two",
            "a blue square next to a much larger green triangle on a white background, drawn by hand"]


@pytest.mark.parametrize("name", ["ViT-tiny-test", "RN-tiny-test"])
def test_onnx_encoders_equal_mmfm(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    model.lock_image_tower()           # exporting must not change a model's flags or mode
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    paths = mmfm.export_onnx(model, tmp_path)
    assert {p.name for p in paths.values()} == {"image_encoder.onnx", "text_encoder.onnx"}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags and not model.training
    # Captions of different lengths in one batch: the end-of-text token is pooled per row, as mmfm does.
    _check_equal(model, paths, CAPTIONS)


def test_export_cli_writes_both_encoders_from_a_model_folder(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").eval()
    save_pretrained(model, tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert "image_encoder.onnx" in capsys.readouterr().out
    _check_equal(model, {"image": tmp_path / "onnx" / "image_encoder.onnx",
                         "text": tmp_path / "onnx" / "text_encoder.onnx"}, CAPTIONS[:2])


def test_export_refuses_what_onnx_cannot_hold(tmp_path, capsys):
    with pytest.raises(ValueError, match="fp32 CPU model"):
        mmfm.export_onnx(create_model("ViT-tiny-test", precision="fp16"), tmp_path)
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
