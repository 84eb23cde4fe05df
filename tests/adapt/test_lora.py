"""CLIP + LoRA: presets and their published parameter counts, the model contract, adapter files
(PEFT-compatible), merging, exports, wrong-base errors, and the few-shot method."""
from __future__ import annotations

import json

import pytest
import torch

from mmfm.adapt import (LORA_PRESETS, apply_lora, export_merged, is_lora_model, load_lora, lora_parameters,
                        merge_lora, merged_copy, save_lora, unload_lora, unmerge_lora)
from mmfm.checkpoints import CheckpointError
from mmfm.measure import count_parameters
from mmfm.api import create_model
from mmfm.models import CLIP, CLIPConfig, TextConfig, build_model, get_model_config


def tiny(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return create_model("ViT-tiny-test")


def inputs(n: int = 2):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (n, 16), generator=g)
    ids[:, 7] = 49407
    return torch.randn(n, 3, 32, 32, generator=g), ids


def randomize_adapters(model, std: float = 0.2) -> None:
    """LoRA B starts at zero (the adapter is a no-op); give it values so tests can see it."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def outputs(model, x, ids):
    model.eval()
    with torch.no_grad():
        out = model(image=x, text=ids)
    return out["image_features"], out["text_features"]


def assert_same_outputs(a, b, atol=1e-5):
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------
def test_published_trainable_counts_on_meta_device():
    from mmfm.info import model_info
    info = model_info("ViT-B-32", lora="attn-mlp-r16")["parameters"]   # the `mmfm info --lora` path
    assert info["trainable"] == 4_423_680
    assert info["total"] == 151_277_313 + 4_423_680
    assert round(100 * info["trainable_share"], 2) == 2.84

    with torch.device("meta"):
        model = build_model(get_model_config("ViT-B-16"))
    apply_lora(model, "qkv-r64")
    counts = count_parameters(model)
    assert counts.trainable == 5_898_240
    assert round(100 * counts.trainable_share, 1) == 3.8
    assert all(p.device.type == "meta" for p in model.parameters())   # nothing was allocated
    assert counts.per_tower["visual"]["trainable"] == 12 * 3 * 64 * (768 + 768)
    assert counts.per_tower["text"]["trainable"] == 12 * 3 * 64 * (512 + 512)


def test_presets_are_the_documented_setups():
    expected = {"qv-r16": (16, 32, 0.05, 2), "qkv-r64": (64, 128, 0.05, 3), "attn-mlp-r16": (16, 32, 0.1, 6),
                "fewshot-r2": (2, 1, 0.25, 3)}
    assert {k: (p.r, p.alpha, p.dropout, len(p.modules)) for k, p in LORA_PRESETS.items()} == expected


def test_only_adapters_train_and_the_clip_contract_holds():
    model = apply_lora(tiny(), "qv-r16", r=4)
    assert isinstance(model, CLIP) and is_lora_model(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not model.logit_scale.requires_grad
    # q and v of every block of both towers: 2 blocks x 2 projections x (A, B) x 2 towers
    assert len(trainable) == 16
    assert {n.split(".")[0] for n in trainable} == {"visual", "text"}
    x, ids = inputs()
    out = model(image=x, text=ids)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    assert model.encode_image(x).shape == (2, 32) and model.encode_text(ids).shape == (2, 32)
    assert isinstance(model.config, CLIPConfig) and model.context_length == 16
    model.lock_image_tower(0)   # locking a tower freezes its adapters too
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("visual."))


def test_tower_selection_overrides_and_logit_scale():
    model = apply_lora(tiny(), "attn-mlp-r16", towers=("text",), r=2, train_logit_scale=True)
    names = list(lora_parameters(model))
    assert names and all(n.startswith("text.") for n in names)
    assert any(".mlp.fc1." in n for n in names) and any(".out_proj." in n for n in names)
    assert model.logit_scale.requires_grad
    assert model.text.transformer.blocks[0].attn.q_proj.lora_A["default"].weight.shape == (2, 32)
    with pytest.raises(KeyError, match="unknown LoRA preset"):
        apply_lora(tiny(), "qv-r99")
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model)
    with pytest.raises(ValueError, match="no tower 'audio'"):
        apply_lora(tiny(), towers=("audio",))
    with pytest.raises(ValueError, match="match no nn.Linear in the 'image' tower"):
        apply_lora(tiny(), target_modules=["fc3"], towers=("image",))


def test_save_load_roundtrip_only_adapter_weights_and_peft_reads_it(tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    model = apply_lora(tiny(), "qv-r16", r=4, train_logit_scale=True)
    randomize_adapters(model)
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    x, ids = inputs()
    ref = outputs(model, x, ids)
    save_lora(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert len(keys) == 16 and all(k.startswith("base_model.model.") and "lora_" in k for k in keys)
    assert json.loads(meta["mmfm_base_config"])["embed_dim"] == 32 and len(meta["mmfm_base_fingerprint"]) == 16

    loaded = load_lora(tiny(), tmp_path / "adapter")
    assert_same_outputs(outputs(loaded, x, ids), ref, atol=0)
    assert float(loaded.logit_scale) == 3.0
    assert not any(p.requires_grad for p in loaded.parameters())   # inference by default
    assert all(p.requires_grad for p in lora_parameters(load_lora(tiny(), tmp_path / "adapter", trainable=True)).values())

    # PEFT itself loads the directory onto a base model.
    peft_model = PeftModel.from_pretrained(tiny(), str(tmp_path / "adapter"))
    assert_same_outputs(outputs(peft_model, x, ids)[:1], ref[:1], atol=0)


def test_merge_unmerge_unload_and_exports(tmp_path):
    model = apply_lora(tiny(), "attn-mlp-r16", r=4)
    randomize_adapters(model)
    x, ids = inputs()
    ref = outputs(model, x, ids)
    base = outputs(tiny(), x, ids)
    assert (ref[0] - base[0]).abs().max() > 1e-2   # the adapters do change the model

    merge_lora(model)
    assert_same_outputs(outputs(model, x, ids), ref)
    unmerge_lora(model)
    assert_same_outputs(outputs(model, x, ids), ref)

    plain = merged_copy(model)
    assert type(plain.visual.transformer.blocks[0].attn.q_proj) is torch.nn.Linear and not is_lora_model(plain)
    assert is_lora_model(model)   # the copy left the original alone
    assert all(p.requires_grad for p in plain.parameters())
    assert_same_outputs(outputs(plain, x, ids), ref)

    export_merged(model, tmp_path / "mmfm")
    assert_same_outputs(outputs(create_model(None, pretrained=str(tmp_path / "mmfm")), x, ids), ref)
    export_merged(model, tmp_path / "hf", format="hf")
    from transformers import CLIPModel
    hf = CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        emb = hf.get_image_features(pixel_values=x)
    emb = getattr(emb, "pooler_output", emb)   # transformers 5 may return an output object
    torch.testing.assert_close(torch.nn.functional.normalize(emb, dim=-1), ref[0], rtol=0, atol=1e-5)

    discarded = unload_lora(model, merge=False)   # in place, adapters dropped
    assert_same_outputs(outputs(discarded, x, ids), base)


def _variant(**text) -> CLIP:
    cfg = get_model_config("ViT-tiny-test")
    cfg.text = TextConfig(**{**cfg.text.__dict__, **text})
    return create_model(cfg)


def test_loading_onto_the_wrong_base_is_a_clear_error_and_changes_nothing(tmp_path):
    model = apply_lora(tiny(), "qv-r16", r=4)
    save_lora(model, tmp_path / "a")

    wider = _variant(width=64)
    with pytest.raises(CheckpointError, match=r"different base model.*text\.width: 32 \(adapter's base\) vs 64"):
        load_lora(wider, tmp_path / "a")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"shape mismatch.*text\.transformer\.blocks\.0\.attn\.q_proj\.lora_A"):
        load_lora(wider, tmp_path / "a", strict=False)   # config check relaxed: the shapes still are not
    assert not is_lora_model(wider)

    shallower = _variant(layers=1)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"modules the model does not have: text\.transformer\.blocks\.1\.attn"):
        load_lora(shallower, tmp_path / "a", strict=False)
    assert not is_lora_model(shallower)

    other_heads = _variant(heads=2)   # same shapes, different config: strict refuses, non-strict warns
    with pytest.raises(CheckpointError, match="text.heads"):
        load_lora(other_heads, tmp_path / "a")
    with pytest.warns(UserWarning, match="different base model"):
        load_lora(other_heads, tmp_path / "a", strict=False)

    with pytest.raises(CheckpointError, match="not a LoRA adapter directory"):
        load_lora(tiny(), tmp_path)


def test_few_shot_lora_method_adapts_a_copy():
    from mmfm.data import get_dataset
    from mmfm.adapt import FEW_SHOT_METHODS, few_shot
    from mmfm.util.weights import model_fingerprint
    assert "lora" in FEW_SHOT_METHODS
    model = tiny()
    before = model_fingerprint(model)
    train = get_dataset("shapes", split="train", size=48, image_size=32)
    test = get_dataset("shapes", split="test", size=24, image_size=32)
    result = few_shot(model, train, test, shots=(2,), seeds=(0,), method="lora", progress=False,
                      method_options={"steps": 3, "batch_size": 8})
    episode = result.per_shot[2]
    assert 0.0 <= episode["mean"] <= 1.0
    extra = episode["episodes"][0]
    assert extra["preset"] == "fewshot-r2" and extra["trainable_params"] > 0 and extra["num_train"] == 12
    few_shot(model, train, test, shots=(1,), seeds=(0,), method="lora", progress=False,
             method_options={"steps": 2, "objective": "contrastive", "preset": "qv-r16"})
    assert model_fingerprint(model) == before and not is_lora_model(model)
    with pytest.raises(ValueError, match="unknown option"):
        few_shot(model, train, test, shots=(1,), seeds=(0,), method="lora", progress=False,
                 method_options={"stpes": 2})


def test_adapters_saved_by_peft_load_and_unload_restores_the_frozen_state(tmp_path):
    from peft import LoraConfig, get_peft_model
    peft_model = get_peft_model(tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    randomize_adapters(peft_model)
    peft_model.save_pretrained(str(tmp_path))
    x, ids = inputs()
    loaded = load_lora(tiny(), tmp_path)
    assert_same_outputs(outputs(loaded, x, ids), outputs(peft_model, x, ids), atol=0)

    model = tiny()
    model.lock_text_tower(0)
    apply_lora(model, "qv-r16", r=2)
    unload_lora(model)
    assert all(not p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.visual.parameters()) and model.logit_scale.requires_grad
