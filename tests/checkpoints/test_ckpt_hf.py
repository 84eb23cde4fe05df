"""Parity with Hugging Face transformers' CLIPModel: import, export, and lossless round trips."""
from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch

from mmfm.checkpoints import CheckpointError, export_hf
from mmfm.api import create_model
from mmfm.models import CLIPConfig, TextConfig, VisionConfig, get_model_config

transformers = pytest.importorskip("transformers")
VOCAB = 100
CTX = 16

# (id, hidden_act, eos_token_id, vision width/heads, text width/heads). eos 2 is HF's "argmax pooling".
CASES = [
    ("quickgelu-argmax-v96h3-t64h2", "quick_gelu", 2, (96, 3), (64, 2)),
    ("gelu-eot-v96h2-t64h4", "gelu", 97, (96, 2), (64, 4)),
]


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _hf_model(randomize, act, eos, vision, text, seed=0):
    (vw, vh), (tw, th) = vision, text
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=tw, intermediate_size=tw * 3, num_hidden_layers=2,
                         num_attention_heads=th, max_position_embeddings=CTX, hidden_act=act, eos_token_id=eos,
                         bos_token_id=98, pad_token_id=1),
        vision_config=dict(hidden_size=vw, intermediate_size=200, num_hidden_layers=2, num_attention_heads=vh,
                           image_size=32, patch_size=8, hidden_act=act),
        projection_dim=24, logit_scale_init_value=2.5)
    return randomize(transformers.CLIPModel(cfg), seed)


def _check_parity(hf, ours, images, ids, close):
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=images)
        close(ours.encode_image(images), hf.get_image_features(pixel_values=images).pooler_output, what="image embeddings")
        close(ours.encode_text(ids), hf.get_text_features(input_ids=ids).pooler_output, what="text embeddings")
        close(ours.encode_image(images, normalize=True), out.image_embeds, what="normalized image embeddings")
        close(ours.encode_text(ids, normalize=True), out.text_embeds, what="normalized text embeddings")
        per_image, per_text = ours.logits(images, ids)
        close(per_image, out.logits_per_image, what="logits per image")
        close(per_text, out.logits_per_text, what="logits per text")


def _eot(eos):
    return None if eos == 2 else eos


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hf_directory_parity(case, tmp_path, randomize, inputs, close):
    _, act, eos, vision, text = case
    hf = _hf_model(randomize, act, eos, vision, text)
    hf.save_pretrained(tmp_path)
    ours = create_model(pretrained=str(tmp_path)).eval()
    cfg = ours.config
    assert cfg.quick_gelu is (act == "quick_gelu")
    assert cfg.text.pool == ("argmax" if eos == 2 else "eot")
    assert (cfg.vision.heads, cfg.text.heads) == (vision[1], text[1])
    images, ids = inputs(32, CTX, VOCAB, eot=_eot(eos))
    if eos != 2:
        ids[0, -1] = VOCAB - 1   # a larger id after the end token: HF pools at the first eos, not the argmax
    _check_parity(hf, ours, images, ids, close)


def test_hf_pytorch_model_bin(tmp_path, randomize, inputs, close):
    """Directories with pytorch_model.bin (older HF checkpoints) load too, via weights_only torch.load."""
    hf = _hf_model(randomize, "quick_gelu", 2, (64, 2), (64, 2), seed=1)
    hf.config.to_json_file(str(tmp_path / "config.json"))
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = create_model(pretrained=str(tmp_path)).eval()
    images, ids = inputs(32, CTX, VOCAB)
    _check_parity(hf, ours, images, ids, close)


def _our_config(act, eos, vision, text) -> CLIPConfig:
    (vw, vh), (tw, th) = vision, text
    return CLIPConfig(embed_dim=24, quick_gelu=act == "quick_gelu",
                      vision=VisionConfig(image_size=32, patch_size=8, width=vw, layers=2, head_width=vw // vh, mlp_ratio=2.5),
                      text=TextConfig(context_length=CTX, vocab_size=VOCAB, width=tw, heads=th, layers=2,
                                      pool="argmax" if eos == 2 else "eot", eot_token_id=eos if eos != 2 else 49407))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_export_hf_and_round_trip(case, tmp_path, randomize, inputs, close):
    """mmfm -> HF directory: CLIPModel.from_pretrained matches; HF -> mmfm is bitwise lossless."""
    _, act, eos, vision, text = case
    ours = randomize(create_model(_our_config(act, eos, vision, text)), seed=2)
    out_dir = export_hf(ours, tmp_path / "hf")
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "model.safetensors"]

    hf = transformers.CLIPModel.from_pretrained(str(out_dir)).eval()
    images, ids = inputs(32, CTX, VOCAB, eot=_eot(eos))
    _check_parity(hf, ours, images, ids, close)

    back = create_model(pretrained=str(out_dir))
    assert back.config == ours.config
    theirs, mine = back.state_dict(), ours.state_dict()
    assert theirs.keys() == mine.keys()
    for k in mine:
        assert torch.equal(theirs[k], mine[k]), k


def test_export_hf_rejects_resnet(tmp_path):
    model = create_model("RN-tiny-test")
    with pytest.raises(CheckpointError, match="modified_resnet"):
        export_hf(model, tmp_path / "rn")
    assert not (tmp_path / "rn").exists()   # nothing written


def test_export_hf_rejects_logit_bias(tmp_path):
    cfg = get_model_config("ViT-tiny-test")
    cfg.init_logit_bias = -10.0
    with pytest.raises(CheckpointError, match="logit bias"):
        export_hf(create_model(cfg), tmp_path / "b")


def test_hf_config_with_unsupported_activation(tmp_path, randomize):
    hf = _hf_model(randomize, "quick_gelu", 2, (64, 2), (64, 2))
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["text_config"]["hidden_act"] = cfg["vision_config"]["hidden_act"] = "gelu_new"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="gelu_new"):
        create_model(pretrained=str(tmp_path))


def test_sharded_hf_checkpoint(tmp_path, randomize, inputs, close):
    hf = _hf_model(randomize, "gelu", 97, (64, 2), (64, 2), seed=3)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = create_model(pretrained=str(tmp_path)).eval()
    images, ids = inputs(32, CTX, VOCAB, eot=97)
    _check_parity(hf, ours, images, ids, close)
