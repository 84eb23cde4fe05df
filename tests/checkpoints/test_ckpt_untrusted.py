"""Untrusted checkpoint folders: bad configs and shard indexes are one clear error naming the field."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmfm.checkpoints import CheckpointError, load_state_dict_file, save_pretrained
from mmfm.checkpoints.hf import config_to_hf, export_hf
from mmfm.api import create_model
from mmfm.models import get_model_config


def _set(root: dict, dotted: str, value) -> dict:
    """``root`` with the value at ``a.b.c`` replaced."""
    *path, last = dotted.split(".")
    d = root
    for k in path:
        d = d[k]
    d[last] = value
    return root


def _assert_one_line_naming(err: pytest.ExceptionInfo, field: str) -> None:
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg, msg   # the CLI prints it and exits 2
    assert field in msg, msg


# (dotted key in config.json, bad value, what the error must name)
HF_BAD = [
    ("text_config.num_attention_heads", 0, "num_attention_heads"),
    ("vision_config.num_attention_heads", -4, "num_attention_heads"),
    ("vision_config.hidden_size", "768", "hidden_size"),
    ("text_config.num_hidden_layers", 2.5, "num_hidden_layers"),
    ("text_config", "clip_text_model", "text_config"),
    ("vision_config", [1, 2], "vision_config"),
    ("vision_config.patch_size", 0, "patch_size"),
    ("vision_config.image_size", "224", "image_size"),
    ("text_config.intermediate_size", None, "intermediate_size"),
    ("text_config.layer_norm_eps", "tiny", "layer_norm_eps"),
    ("projection_dim", -1, "projection_dim"),
    ("logit_scale_init_value", "hot", "logit_scale_init_value"),
    ("text_config.max_position_embeddings", True, "max_position_embeddings"),
]


@pytest.mark.parametrize("key,value,field", HF_BAD, ids=[f"{k}={v!r}" for k, v, _ in HF_BAD])
def test_bad_hf_config_is_one_clear_error(key, value, field, tmp_path):
    export_hf(create_model("ViT-tiny-test"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(_set(cfg, key, value)))
    with pytest.raises(CheckpointError) as err:
        create_model(pretrained=str(tmp_path))
    _assert_one_line_naming(err, field)


NATIVE_BAD = [
    ("config.vision.width", -64, "vision.width"),
    ("config.vision.head_width", 0, "vision.head_width"),
    ("config.vision.patch_size", 0, "vision.patch_size"),
    ("config.vision.layers", "2", "vision.layers"),
    ("config.vision.mlp_ratio", -1.0, "vision.mlp_ratio"),
    ("config.vision.width", 60, "vision"),              # not a multiple of head_width 16
    ("config.text.heads", 0, "text.heads"),
    ("config.text.width", "32", "text.width"),
    ("config.text.context_length", -1, "text.context_length"),
    ("config.text.vocab_size", 0, "text.vocab_size"),
    ("config.embed_dim", 0, "embed_dim"),
    ("config.quick_gelu", "yes", "quick_gelu"),
    ("config.init_logit_scale", "x", "init_logit_scale"),
    ("config.vision", "vit", "vision"),
    ("config", [], "config"),
]


@pytest.mark.parametrize("key,value,field", NATIVE_BAD, ids=[f"{k}={v!r}" for k, v, _ in NATIVE_BAD])
def test_bad_native_config_is_one_clear_error(key, value, field, tmp_path):
    save_pretrained(create_model("ViT-tiny-test"), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(_set(meta, key, value)))
    with pytest.raises(CheckpointError) as err:
        create_model(pretrained=str(tmp_path))
    _assert_one_line_naming(err, field)


def test_bad_resnet_config_is_one_clear_error(tmp_path):
    save_pretrained(create_model("RN-tiny-test"), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    for key, value, field in [("config.vision.layers", [1, 1, 0, 1], "vision.layers"),
                              ("config.vision.image_size", 40, "vision.image_size")]:
        bad = json.loads(json.dumps(meta))
        (tmp_path / "config.json").write_text(json.dumps(_set(bad, key, value)))
        with pytest.raises(CheckpointError) as err:
            create_model(pretrained=str(tmp_path))
        _assert_one_line_naming(err, field)


OPENCLIP_BAD = [
    ("model_cfg.vision_cfg", "ViT-B-32", "vision_cfg"),
    ("model_cfg.text_cfg.heads", 0, "heads"),
    ("model_cfg.vision_cfg.width", "768", "width"),
    ("model_cfg.embed_dim", -3, "embed_dim"),
    ("model_cfg.vision_cfg.image_size", "big", "image_size"),
    ("model_cfg", None, "model_cfg"),
]


@pytest.mark.parametrize("key,value,field", OPENCLIP_BAD, ids=[f"{k}={v!r}" for k, v, _ in OPENCLIP_BAD])
def test_bad_openclip_config_is_one_clear_error(key, value, field, tmp_path):
    from mmfm.checkpoints import to_openclip_config, to_openclip_state_dict
    model = create_model("ViT-tiny-test")
    save_file({k: v.contiguous() for k, v in to_openclip_state_dict(model).items()},
              str(tmp_path / "open_clip_model.safetensors"))
    cfg = {"model_cfg": json.loads(json.dumps(to_openclip_config(model.config)))}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(_set(cfg, key, value)))
    with pytest.raises(CheckpointError) as err:
        create_model(pretrained=str(tmp_path))
    _assert_one_line_naming(err, field)


# ------------------------------------------------------------------------------------------
# Shard indexes
def _sharded_hf_dir(tmp_path: Path) -> Path:
    """An HF folder whose weights are split in two shards with a model.safetensors.index.json."""
    folder = tmp_path / "hf"
    export_hf(create_model("ViT-tiny-test"), folder)
    from safetensors.torch import load_file
    sd = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(folder / name))
    _write_index(folder, {k: name for name, ks in shards.items() for k in ks})
    return folder


def _write_index(folder: Path, weight_map) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_hf_dir_loads(tmp_path):
    folder = _sharded_hf_dir(tmp_path)
    assert create_model(pretrained=str(folder)).config.vision.width == 64


@pytest.mark.parametrize("weight_map", [["model-00001-of-00002.safetensors"], {"visual.proj": 3}, "x"],
                         ids=["list", "non-string-shard", "string"])
def test_malformed_shard_index(weight_map, tmp_path):
    folder = _sharded_hf_dir(tmp_path)
    _write_index(folder, weight_map)
    with pytest.raises(CheckpointError) as err:
        create_model(pretrained=str(folder))
    _assert_one_line_naming(err, "weight_map")


def _outside_file(tmp_path: Path) -> Path:
    secret = tmp_path / "elsewhere" / "secret.safetensors"
    secret.parent.mkdir()
    save_file({"secret": torch.arange(4.0)}, str(secret))
    return secret


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_shard_index_cannot_name_files_outside_its_folder(how, tmp_path):
    folder = _sharded_hf_dir(tmp_path)
    secret = _outside_file(tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    if how == "absolute":
        shard = str(secret)
    elif how == "dotdot":
        shard = "../elsewhere/secret.safetensors"
    else:
        os.symlink(secret, folder / "model-00003-of-00003.safetensors")
        shard = "model-00003-of-00003.safetensors"
    index["weight_map"]["secret"] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as err:
        load_state_dict_file(folder / "model.safetensors.index.json")
    _assert_one_line_naming(err, "outside")
    with pytest.raises(CheckpointError):
        create_model(pretrained=str(folder))


def test_hf_cache_snapshot_symlinks_are_allowed(tmp_path):
    """huggingface_hub's cache links snapshots/<rev>/<file> to ../../blobs/<hash>: that is inside the repo."""
    folder = _sharded_hf_dir(tmp_path)
    repo = tmp_path / "models--org--clip"
    snapshot = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(folder.iterdir())):
        blob = repo / "blobs" / f"hash{i}"
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.join("..", "..", "blobs", blob.name), snapshot / f.name)
    assert create_model(pretrained=str(snapshot)).config.vision.width == 64
