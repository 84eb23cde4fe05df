"""Reading a pretrained causal language model (Frozen's ``pretrained_lm``): a local directory, the Hugging Face
cache, or the hub.

A local directory is used as is, a hub identifier is taken from the Hugging Face cache or downloaded, and
when the network cannot be reached the error says so at once (``hub.hf_hub_unreachable``: no minute of
retries) and names the identifier and how to pass a local directory. There is never a silent fallback to
random weights. The model itself is built by ``mmfm.models.causal_lm``; ``build_language_model`` is the
``lm_loader`` the door (``mmfm.create_model``) hands to ``FrozenModel``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..models.causal_lm import causal_lm_from_config
from ..util.hf import quiet_transformers
from . import hub
from .validate import CheckpointError


def _offline_error(identifier: str, reason: str) -> Exception:
    return CheckpointError(
        f"cannot load the language model {identifier!r}: {reason}, and it is not in the Hugging Face cache. "
        f"Download it where there is network access (e.g. `huggingface-cli download {identifier} --local-dir "
        f"/path/to/{identifier.split('/')[-1]}`) and point the model at that directory: "
        f"pretrained_lm: /path/to/{identifier.split('/')[-1]} in the config (or FrozenConfig(pretrained_lm=...)).")


def _require_hub(identifier: str) -> None:
    """Raise at once (a few seconds at most) if the hub cannot be reached."""
    reason = hub.hf_hub_unreachable()
    if reason is not None:
        raise _offline_error(identifier, reason)


def resolve_pretrained(identifier: str, load):
    """``load(identifier, local_files_only)`` from a local directory, the HF cache, or the hub (fast failure)."""
    local = Path(identifier).expanduser()
    if local.exists():
        if not local.is_dir():
            raise FileNotFoundError(f"{identifier!r} is a file; a language model is loaded from a directory "
                                    f"(config.json + weights, as written by save_pretrained)")
        return load(str(local), True)
    if identifier.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"language model directory {identifier!r} does not exist")
    try:
        return load(identifier, True)     # already cached: no network needed
    except OSError:
        pass
    _require_hub(identifier)
    try:
        return load(identifier, False)
    except OSError as e:
        raise _offline_error(identifier, f"{type(e).__name__}: {str(e).splitlines()[0]}") from None


def build_language_model(lm_cfg: dict[str, Any] | None, pretrained: str | None, load_weights: bool = True) -> nn.Module:
    """A causal LM: weights from ``pretrained`` (checked against ``lm_cfg``), else random from ``lm_cfg``.

    ``load_weights=False`` (building on the meta device, e.g. ``mmfm info``) never touches weights: the
    shapes come from ``lm_cfg``, or from ``pretrained``'s config.json when only that is given.
    """
    from transformers import AutoModelForCausalLM
    if pretrained is None or not load_weights:
        if lm_cfg is None:
            if pretrained is None:
                raise ValueError("a Frozen model needs the LM's config (`lm`) or weights (`pretrained_lm`)")
            lm_cfg = language_model_config(pretrained)
        return causal_lm_from_config(lm_cfg)
    with quiet_transformers():
        model = resolve_pretrained(pretrained, lambda ident, local_only: AutoModelForCausalLM.from_pretrained(
            ident, local_files_only=local_only))
    if lm_cfg is not None:
        check_lm_config(lm_cfg, model.config.to_dict(), pretrained)
    return model


def language_model_config(pretrained: str) -> dict[str, Any]:
    """The config dict of a pretrained LM (local directory or cached/downloadable identifier)."""
    from transformers import AutoConfig
    cfg = resolve_pretrained(pretrained, lambda ident, local_only: AutoConfig.from_pretrained(
        ident, local_files_only=local_only))
    d = {k: v for k, v in cfg.to_diff_dict().items() if k not in ("transformers_version", "architectures", "_name_or_path")}
    return d | {"model_type": cfg.model_type}


def check_lm_config(expected: dict[str, Any], actual: dict[str, Any], source: str) -> None:
    """The shapes the Frozen config promises must be those of the weights actually loaded."""
    shape_keys = ("model_type", "vocab_size", "n_embd", "hidden_size", "n_layer", "num_hidden_layers", "n_head",
                  "num_attention_heads", "n_positions", "max_position_embeddings", "n_inner", "intermediate_size")
    diffs = [f"{k}: config {expected[k]!r} vs {source} {actual.get(k)!r}" for k in shape_keys
             if k in expected and expected[k] is not None and k in actual and actual[k] != expected[k]]
    if diffs:
        raise CheckpointError(f"the language model at {source!r} does not match the Frozen config's `lm`: "
                              + "; ".join(diffs))
