"""Safe reading: TorchScript archives without running code, and clear errors for bad files."""
from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmfm.checkpoints import CheckpointError, load_state_dict_file, load_state_dict_strict, save_pretrained
from mmfm.api import create_model


class _Trap:
    """Pickles into a call that creates a marker file: loading it must never execute that call."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_torchscript_archive(tmp_path, open_clip, randomize, inputs, close):
    """OpenAI-style TorchScript archive (traced open_clip model): read without torch.jit.load, arch inferred."""
    theirs = randomize(open_clip.CLIP(16, dict(image_size=32, patch_size=16, width=64, layers=2),
                                      dict(context_length=8, vocab_size=50, width=64, heads=1, layers=2), quick_gelu=True))
    images, ids = inputs(32, 8, 50, batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(theirs, dict(encode_image=(images,), encode_text=(ids,)), check_trace=False)
        path = tmp_path / "ViT-tiny.pt"
        torch.jit.save(traced, str(path))
    with zipfile.ZipFile(path) as zf:
        assert any(n.endswith("/constants.pkl") for n in zf.namelist())   # really a TorchScript archive

    sd = load_state_dict_file(path)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in sd
    ours = create_model(pretrained=str(path)).eval()
    assert ours.config.quick_gelu is True and ours.config.vision.patch_size == 16 and ours.config.text.heads == 1
    with torch.no_grad():
        close(ours.encode_image(images), theirs.encode_image(images), what="image embeddings")
        close(ours.encode_text(ids), theirs.encode_text(ids), what="text embeddings")


def test_torchscript_reader_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/constants.pkl", pickle.dumps(()))
        zf.writestr("archive/data.pkl", pickle.dumps({"x": _Trap(marker)}, protocol=2))
    path = tmp_path / "evil_script.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="refusing to load global"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_pickle_checkpoint_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "trap": _Trap(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_state_dict_file(path)
    assert not marker.exists()


def _saved_tiny(tmp_path: Path) -> Path:
    save_pretrained(create_model("ViT-tiny-test"), tmp_path / "ok")
    return tmp_path / "ok" / "model.safetensors"


def test_truncated_safetensors(tmp_path):
    good = _saved_tiny(tmp_path)
    data = good.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        create_model(pretrained=str(bad))
    good.write_bytes(data[: len(data) - 100])     # a truncated file inside an mmfm directory
    with pytest.raises(CheckpointError, match="model.safetensors"):
        create_model(pretrained=str(good.parent))


def test_garbage_and_truncated_pt(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        create_model(pretrained=str(garbage))
    torch.save(create_model("ViT-tiny-test").state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.pt"):
        create_model("ViT-tiny-test", pretrained=str(tmp_path / "cut.pt"))


def test_shape_mismatch_names_keys_and_loads_nothing(tmp_path):
    other = create_model("RN-tiny-test").state_dict()
    model = create_model("ViT-tiny-test")
    sd = dict(model.state_dict())
    sd["text.positional_embedding"] = torch.zeros(8, 32)     # wrong shape
    sd["text.ln_final.weight"] = torch.zeros(7)              # wrong shape
    sd.pop("visual.proj")                                    # missing
    sd["visual.extra"] = torch.zeros(1)                      # unexpected
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(model, sd, source="fake.safetensors")
    msg = str(err.value)
    assert "fake.safetensors" in msg and "nothing was loaded" in msg
    assert "2 shape mismatch" in msg and "text.positional_embedding (checkpoint [8, 32] vs model [16, 32])" in msg
    assert "1 missing key" in msg and "visual.proj" in msg
    assert "1 unexpected key" in msg and "visual.extra" in msg
    for k, v in model.state_dict().items():          # never half-loaded
        assert torch.equal(v, before[k]), k

    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "rn.safetensors"))
    with pytest.raises(CheckpointError, match=r"\d+ unexpected key\(s\): visual\.(layer|bn|conv|attnpool)"):
        create_model("ViT-tiny-test", pretrained=str(tmp_path / "rn.safetensors"))


def test_non_strict_loading(tmp_path):
    model = create_model("ViT-tiny-test")
    sd = dict(create_model("ViT-tiny-test").state_dict())
    sd.pop("logit_scale")
    sd["unused"] = torch.zeros(1)
    load_state_dict_strict(model, sd, source="x", strict=False)
    assert torch.equal(model.visual.proj, sd["visual.proj"])


def test_not_a_checkpoint_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        create_model(pretrained=str(tmp_path))
