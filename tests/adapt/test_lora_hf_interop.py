"""LoRA adapters both ways between mmfm and Hugging Face ``CLIPModel`` + PEFT (issue 16, item 4).

An adapter trained with PEFT on a transformers CLIP loads into the equivalent mmfm model, and one
saved by mmfm with ``format="hf"`` loads with ``PeftModel.from_pretrained`` on the ``export_hf``
model; the embeddings agree to 1e-5 either way. The adapters are random and non-zero (B != 0), so a
mapping that dropped or misplaced any of them would change the outputs.
"""
from __future__ import annotations

import copy
import json
import logging
import warnings

import pytest
import torch

from mmfm.adapt import LORA_PRESETS, apply_lora, load_lora, save_lora
from mmfm.checkpoints import CheckpointError, export_hf
from mmfm.api import create_model

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VOCAB, CTX, SIZE = 100, 16, 32
#: The seeds' setups as HF + PEFT users write them: (id, r, alpha, target_modules, mmfm preset).
PRESETS = [
    ("qv-r16", 16, 32, ["q_proj", "v_proj"]),
    ("qkv-r64", 64, 128, ["q_proj", "k_proj", "v_proj"]),
    ("attn-mlp-r16", 16, 32, ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]),
]


@pytest.fixture(autouse=True)
def _quiet():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(old)


def _hf_clip(seed: int = 0):
    """A tiny random transformers CLIPModel (argmax pooling, as OpenAI's weights)."""
    torch.manual_seed(seed)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CTX, hidden_act="quick_gelu", eos_token_id=2,
                         bos_token_id=98, pad_token_id=1),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                           image_size=SIZE, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=24, logit_scale_init_value=2.5)
    return transformers.CLIPModel(cfg).eval()


def _inputs(batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    ids = torch.randint(3, VOCAB - 1, (batch, CTX), generator=g)
    for i in range(batch):   # the end token (the largest id) at a different place per row, padding after it
        ids[i, CTX // 2 + i] = VOCAB - 1
        ids[i, CTX // 2 + i + 1:] = 0
    return images, ids


def _randomize_lora(model: torch.nn.Module, seed: int = 3) -> None:
    """Non-zero B (PEFT initialises it to zero), so every adapter changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _hf_embeddings(hf, images, ids):
    with torch.no_grad():
        img, txt = hf.get_image_features(pixel_values=images), hf.get_text_features(input_ids=ids)
    # transformers 5 returns a model output whose pooler_output is the projected embedding
    return getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)


def _mmfm_embeddings(model, images, ids):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(ids)


def _assert_equal_outputs(ours, theirs, base):
    for a, b, c, what in zip(ours, theirs, base, ("image", "text")):
        assert (a - b).abs().max().item() < 1e-5, f"{what} embeddings differ by {(a - b).abs().max().item():.2e}"
        assert (a - c).abs().max().item() > 1e-3, f"the adapter does not change the {what} embeddings: test is void"


@pytest.mark.parametrize("preset", PRESETS, ids=[p[0] for p in PRESETS])
def test_peft_adapter_from_hf_clip_loads_into_mmfm(preset, tmp_path):
    _, r, alpha, targets = preset
    hf = _hf_clip()
    hf.save_pretrained(tmp_path / "base")
    images, ids = _inputs()
    base = _hf_embeddings(hf, images, ids)
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.05,
                                                         target_modules=targets))
    _randomize_lora(peft_model)
    peft_model.eval()
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    theirs = _hf_embeddings(peft_model, images, ids)

    ours = create_model(pretrained=str(tmp_path / "base")).eval()
    load_lora(ours, tmp_path / "adapter")
    _assert_equal_outputs(_mmfm_embeddings(ours, images, ids), theirs, base)


@pytest.mark.parametrize("preset", PRESETS, ids=[p[0] for p in PRESETS])
def test_mmfm_adapter_saved_as_hf_loads_with_peft(preset, tmp_path):
    hf = _hf_clip(seed=1)
    hf.save_pretrained(tmp_path / "base")
    plain = create_model(pretrained=str(tmp_path / "base")).eval()
    images, ids = _inputs()
    base = _mmfm_embeddings(plain, images, ids)
    model = apply_lora(copy.deepcopy(plain), preset[0])
    _randomize_lora(model)
    model.eval()
    save_lora(model, tmp_path / "adapter", format="hf")
    ours = _mmfm_embeddings(model, images, ids)
    targets = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"]
    suffixes = {"q": "self_attn\\.q_proj", "fc1": "mlp\\.fc1"}
    assert targets.startswith(r"^(?:text_model|vision_model)\.(?:.*\.)?(?:")   # compact: towers + module names
    assert all(suffixes[m] in targets for m in ("q", "fc1") if m in LORA_PRESETS[preset[0]].modules)

    export_hf(plain, tmp_path / "export")
    hf_base = transformers.CLIPModel.from_pretrained(str(tmp_path / "export")).eval()
    theirs = _hf_embeddings(peft.PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval(), images, ids)
    _assert_equal_outputs(ours, theirs, base)

    # ... and back: the HF-format adapter also loads into mmfm
    again = load_lora(copy.deepcopy(plain), tmp_path / "adapter")
    _assert_equal_outputs(_mmfm_embeddings(again, images, ids), theirs, base)


def test_hf_adapter_keeps_layer_selection(tmp_path):
    """An adapter on some layers of one tower only maps to exactly those layers (not every q/v)."""
    hf = _hf_clip(seed=2)
    hf.save_pretrained(tmp_path / "base")
    images, ids = _inputs()
    base = _hf_embeddings(hf, images, ids)
    regex = r"vision_model\.encoder\.layers\.1\.self_attn\.(q_proj|v_proj)"
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=regex))
    _randomize_lora(peft_model)
    peft_model.eval().save_pretrained(str(tmp_path / "adapter"))
    theirs = _hf_embeddings(peft_model, images, ids)
    ours = load_lora(create_model(pretrained=str(tmp_path / "base")).eval(), tmp_path / "adapter")
    assert sorted({n.split(".lora_")[0] for n in ours.state_dict() if "lora_A" in n}) == [
        "visual.transformer.blocks.1.attn.q_proj", "visual.transformer.blocks.1.attn.v_proj"]
    a, b = _mmfm_embeddings(ours, images, ids)
    assert (a - theirs[0]).abs().max() < 1e-5 and (b - base[1]).abs().max() < 1e-5   # text tower as the base


def test_hf_adapter_for_unmappable_module_is_refused_unchanged(tmp_path):
    """LoRA on HF's visual_projection (a Parameter in mmfm, not a Linear): one error, model untouched."""
    hf = _hf_clip(seed=2)
    hf.save_pretrained(tmp_path / "base")
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "visual_projection"]))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    ours = create_model(pretrained=str(tmp_path / "base")).eval()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(CheckpointError, match="visual_projection"):
        load_lora(ours, tmp_path / "adapter")
    assert ours.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


def test_save_lora_rejects_unknown_format(tmp_path):
    model = apply_lora(create_model("ViT-tiny-test"), "qv-r16")
    with pytest.raises(ValueError, match="format"):
        save_lora(model, tmp_path / "a", format="onnx")
    saved = json.loads((save_lora(model, tmp_path / "b", format="mmfm") / "adapter_config.json").read_text())
    assert saved["r"] == 16


def test_load_lora_onto_eval_model_stays_in_eval_mode(tmp_path):
    """PEFT creates the new layers (with dropout) in training mode; an evaluated model must not drop out."""
    model = apply_lora(create_model("ViT-tiny-test"), "qv-r16")
    save_lora(model, tmp_path / "a")
    loaded = load_lora(create_model("ViT-tiny-test").eval(), tmp_path / "a")
    assert not any(m.training for m in loaded.modules())


PEFT_OPTIONS = [
    ("rank-alpha-patterns", dict(target_modules=["q_proj", "v_proj", "fc1"], rank_pattern={"v_proj": 8},
                                 alpha_pattern={"fc1": 3})),
    ("layers-to-transform", dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[1], layers_pattern="layers")),
    ("bias-all", dict(target_modules=["q_proj", "v_proj"], bias="all")),
]


@pytest.mark.parametrize("options", PEFT_OPTIONS, ids=[o[0] for o in PEFT_OPTIONS])
def test_peft_options_that_select_by_name_survive_the_renaming(options, tmp_path):
    """Per-module ranks/alphas, layer selections and trained biases are keyed by HF module names in the
    adapter config; after loading, mmfm computes what PEFT on the CLIPModel computes."""
    hf = _hf_clip(seed=4)
    hf.save_pretrained(tmp_path / "base")
    images, ids = _inputs()
    base = _hf_embeddings(hf, images, ids)
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, **options[1]))
    _randomize_lora(peft_model)
    with torch.no_grad():   # trained biases (bias="all") differ from the base model's
        for n, p in peft_model.named_parameters():
            if n.endswith("bias") and p.requires_grad:
                p.add_(0.1)
    peft_model.eval().save_pretrained(str(tmp_path / "adapter"))
    theirs = _hf_embeddings(peft_model, images, ids)
    ours = load_lora(create_model(pretrained=str(tmp_path / "base")).eval(), tmp_path / "adapter")
    _assert_equal_outputs(_mmfm_embeddings(ours, images, ids), theirs, base)
