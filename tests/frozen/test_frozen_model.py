"""FrozenConfig / FrozenModel: configs alone give the published sizes; the loss covers caption tokens only."""
from __future__ import annotations

import pytest
import torch

from mmfm.api import create_model
from mmfm.models import ConfigError, build_model, get_model_config, list_models
from mmfm.models.frozen import IGNORE_INDEX, FrozenConfig, FrozenModel
from mmfm.models.registry import config_from_dict


def test_published_scale_from_config_alone():
    from mmfm.info import model_info
    p = model_info("frozen-rn50-gpt2-large")["parameters"]
    # ResNet-50 without fc (23.5M) + linear 2048 -> 2 x 1280 (5.2M) trained; GPT-2 Large (774M) frozen.
    assert 790e6 < p["total"] < 810e6
    assert 25e6 < p["trainable"] < 30e6
    assert 770e6 < p["frozen"] < 780e6
    assert p["per_tower"]["lm"]["trainable"] == 0
    assert p["per_tower"]["lm"]["total"] == 774_030_080       # GPT-2 Large, tied embeddings counted once


def test_named_configs_registered():
    names = list_models("frozen")
    assert {"frozen-rn50-gpt2-large", "frozen-tiny-test", "frozen-small-64"} <= set(names)
    cfg = get_model_config("frozen-rn50-gpt2-large")
    assert cfg.lm["n_embd"] == 1280 and cfg.lm["n_layer"] == 36 and cfg.lm["n_head"] == 20
    assert cfg.lm["vocab_size"] == 50257 and cfg.prefix_length == 2 and cfg.vision == "resnet50"


def test_config_round_trip_and_errors(tiny_config):
    again = config_from_dict(tiny_config.to_dict())
    assert isinstance(again, FrozenConfig) and again == tiny_config
    with pytest.raises(ConfigError, match="unknown key"):
        FrozenConfig.from_dict({**tiny_config.to_dict(), "prefix_len": 3})
    with pytest.raises(ConfigError, match="prefix_length"):
        FrozenConfig(lm={"n_embd": 8}, prefix_length=0)
    with pytest.raises(ConfigError, match="language model"):
        FrozenConfig()
    with pytest.raises(ConfigError, match="image_size"):
        FrozenConfig(vision={"kind": "modified_resnet", "image_size": 32, "layers": [1, 1, 1, 1]}, image_size=64,
                     lm={"n_embd": 8})


def test_loss_is_on_caption_tokens_only(tiny_model, tokenizer):
    ids = tokenizer(["a red circle", "This is a dax."])
    mask = tokenizer.attention_mask(ids)
    image = torch.randn(2, 3, 32, 32)
    tiny_model.eval()
    out = tiny_model(image=image, input_ids=ids, attention_mask=mask)
    n = tiny_model.prefix_length
    assert out["logits"].shape == (2, n + ids.shape[1], tiny_model.lm.config.vocab_size)
    # Reference: position n-1+t predicts token t; padding ignored; EOS kept (it teaches stopping).
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    assert (labels == tokenizer.eos_id).sum() == 2
    expected = torch.nn.functional.cross_entropy(out["logits"][:, n - 1:-1].reshape(-1, out["logits"].shape[-1]),
                                                 labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out["loss"], expected)
    # Whatever sits in the padding changes nothing.
    noisy = ids.masked_fill(mask == 0, 5)
    torch.testing.assert_close(tiny_model(image=image, input_ids=noisy, attention_mask=mask)["loss"], out["loss"])


def test_labels_select_the_answer(tiny_model, tokenizer):
    ids, labels = tokenizer.encode_pair("Q: what colour is it? A:", "red")
    prompt_len = len(tokenizer.encode("Q: what colour is it? A:"))
    assert (labels[:prompt_len] == IGNORE_INDEX).all()
    assert labels[prompt_len:prompt_len + 2].tolist() == [tokenizer.encode("red")[0], tokenizer.eos_id]
    ids, labels = ids.expand(2, -1), labels.expand(2, -1)
    out = tiny_model(image=torch.randn(2, 3, 32, 32), input_ids=ids, labels=labels,
                     attention_mask=tokenizer.attention_mask(ids))
    assert torch.isfinite(out["loss"])


def test_prefix_targets_add_a_relative_distance_to_the_description_embeddings(tiny_model, tokenizer):
    ids = tokenizer(["a red circle", "a green star"])
    mask = tokenizer.attention_mask(ids)
    image = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([tokenizer.encode("red circle"), tokenizer.encode("green star")])
    tiny_model.eval()
    plain = tiny_model(image=image, input_ids=ids, attention_mask=mask)
    out = tiny_model(image=image, input_ids=ids, attention_mask=mask, prefix_targets=targets, prefix_weight=3.0)
    table = tiny_model.lm.get_input_embeddings().weight
    expected = (tiny_model.embed_images(image) - table[targets]).pow(2).sum(-1).mean() / table.pow(2).sum(-1).mean()
    torch.testing.assert_close(out["prefix_loss"], expected)
    torch.testing.assert_close(out["caption_loss"], plain["loss"])
    torch.testing.assert_close(out["loss"], plain["loss"] + 3.0 * expected)
    # The gradient reaches the vision side and the mapper, never the LM's (frozen) embedding table.
    tiny_model.zero_grad(set_to_none=True)
    tiny_model(image=image, input_ids=ids, attention_mask=mask, prefix_targets=targets)["prefix_loss"].backward()
    assert tiny_model.mapper.weight.grad.abs().sum() > 0 and table.grad is None
    # Fewer targets than slots: the last slots are placed, the first stay free.
    last = tiny_model(image=image, input_ids=ids, attention_mask=mask, prefix_targets=targets[:, 1:])
    free = (tiny_model.embed_images(image)[:, 1:] - table[targets[:, 1:]]).pow(2).sum(-1).mean()
    torch.testing.assert_close(last["prefix_loss"], free / table.pow(2).sum(-1).mean())
    with pytest.raises(ValueError, match=r"prefix_targets must be \[batch, m\] .* 1 <= m <= prefix_length = 2"):
        tiny_model(image=image, input_ids=ids, prefix_targets=torch.cat([targets, targets], 1))


def test_lm_is_frozen_and_stays_in_eval_mode(tiny_model):
    assert not any(p.requires_grad for p in tiny_model.lm.parameters())
    assert all(p.requires_grad for n, p in tiny_model.named_parameters() if not n.startswith("lm."))
    tiny_model.train()
    assert tiny_model.visual.training and not tiny_model.lm.training


def test_state_dict_leaves_out_a_pretrained_lm(tiny_model, tiny_config):
    sd = tiny_model.state_dict()
    assert sd and not any(k.startswith("lm.") for k in sd)
    fresh = create_model(tiny_config)
    fresh.load_state_dict(sd)                      # complete without the LM: strict load succeeds
    with pytest.raises(RuntimeError):
        fresh.load_state_dict({k: v for k, v in sd.items() if not k.startswith("mapper.")})
    # A random LM built from the config alone cannot be re-read from anywhere: it is saved.
    random_lm = create_model("frozen-tiny-test")
    assert any(k.startswith("lm.") for k in random_lm.state_dict())


def test_torchvision_encoder_and_meta_build(lm_config):
    cfg = FrozenConfig(vision="resnet18", image_size=32, lm=dict(lm_config), prefix_length=3)
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.mapper.in_features == 512 and model.mapper.out_features == 3 * 32
    with pytest.raises(ConfigError, match="torchvision"):
        FrozenModel(FrozenConfig(vision="not-a-model", lm=dict(lm_config)))


def test_pretrained_lm_shapes_must_match_the_config(lm_config, lm_dir):
    from mmfm.checkpoints import CheckpointError
    cfg = FrozenConfig(vision="resnet18", image_size=32, lm={**lm_config, "n_layer": 3}, pretrained_lm=str(lm_dir))
    with pytest.raises(CheckpointError, match="n_layer"):
        create_model(cfg)


def test_offline_hub_identifier_fails_fast_with_a_clear_message(monkeypatch, tiny_config, lm_config):
    from mmfm.checkpoints import CheckpointError
    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache("gpt2-large", "config.json"), str):
        pytest.skip("gpt2-large is in the local Hugging Face cache: nothing to fail on")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert get_model_config("frozen-rn50-gpt2-large").pretrained_lm == "gpt2-large"
    # Same LM identifier, small vision side and LM shapes: only the loading is under test.
    cfg = FrozenConfig(vision=tiny_config.vision, lm=dict(lm_config), pretrained_lm="gpt2-large")
    with pytest.raises(CheckpointError) as info:
        create_model(cfg)
    msg = str(info.value)
    assert "'gpt2-large'" in msg and "pretrained_lm" in msg and "local" in msg and "offline mode is on" in msg

def test_models_never_read_a_pretrained_lm_themselves(tiny_config, lm_config):
    # Reading weights from disk or the hub is the door's job (hub checks, checkpoint errors live above models).
    with pytest.raises(ConfigError, match=r"has to be read from disk or the hub: build this config with mmfm.create_model"):
        FrozenModel(tiny_config)
    with torch.device("meta"):            # shapes alone need no reading
        assert FrozenModel(tiny_config).lm.config.n_layer == lm_config["n_layer"]
    lm = create_model(tiny_config).lm
    assert FrozenModel(tiny_config, lm=lm).lm is lm
