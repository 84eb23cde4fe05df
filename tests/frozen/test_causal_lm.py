"""`family: causal_lm` through `mmfm run`: a text LM trained by the Trainer, bit-identical to the loop it replaced."""
import math
import random

import pytest
import torch
import yaml
from torch import nn

from mmfm.data import get_dataset
from mmfm.experiment import load_experiment, run_experiment
from mmfm.frozen.lm import tiny_gpt2_config, train_word_tokenizer
from mmfm.models.causal_lm import causal_lm_from_config

CORPUS = {"name": "shapes_text", "args": {"documents": 40, "size": 200, "seed": 0}}
LM = {"n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32}


def _config(tmp_path, steps=12, **model):
    raw = {"name": "lm", "seed": 0, "data": {"train": CORPUS}, "val_data": None,
           "models": [{"label": "lm", "config": {"family": "causal_lm", "lm": LM}, "tokenizer": "word-level",
                       "train": {"max_steps": steps, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5,
                                 "weight_decay": 0.01, "weight_decay_on": "all", "eps": 1e-8,
                                 "schedule": "cosine_whole", "tensorboard": False, "progress": False,
                                 "log_every": 4}, **model}]}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def old_train_text_lm(texts, tokenizer, lm_cfg, *, steps, batch_size, lr, warmup, seed):
    """The loop `train_text_lm` had before it ran on the Trainer (mmfm 46d9baa), copied as the reference."""
    torch.manual_seed(seed)
    model = causal_lm_from_config(lm_cfg)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ctx = lm_cfg.get("n_positions", 128)
    encoded = [ids[:ctx - 1] + [eos] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) *
                                              0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    rng = random.Random(seed)
    order = []
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order += fresh
        batch = [encoded[i] for i in order[:batch_size]]
        del order[:batch_size]
        width = max(len(b) for b in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, b in enumerate(batch):
            ids[r, :len(b)] = torch.tensor(b)
            mask[r, :len(b)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                           ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model


def test_causal_lm_run_is_bit_identical_to_the_old_loop(tmp_path):
    run_experiment(_config(tmp_path), tmp_path / "run")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    new = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "lm" / "model"))
    corpus = get_dataset("shapes_text", **CORPUS["args"])
    tok = train_word_tokenizer(corpus.vocabulary + corpus.texts)
    assert AutoTokenizer.from_pretrained(str(tmp_path / "run" / "lm" / "model")).get_vocab() == tok.get_vocab()
    torch.manual_seed(123)    # the reference seeds itself, as the old loop did
    old = old_train_text_lm(corpus.texts, tok, tiny_gpt2_config(len(tok), tok.eos_token_id, **LM),
                            steps=12, batch_size=8, lr=3e-3, warmup=5, seed=0)
    a, b = old.state_dict(), new.state_dict()
    assert sorted(a) == sorted(b)
    moved = [k for k in a if not torch.equal(a[k], b[k])]
    assert not moved, f"parameters differ from the old loop's: {moved[:5]}"
    assert not torch.equal(a["transformer.h.0.mlp.c_fc.weight"],
                           causal_lm_from_config(tiny_gpt2_config(len(tok), tok.eos_token_id, **LM))
                           .state_dict()["transformer.h.0.mlp.c_fc.weight"])      # it did train


def test_text_file_documents_train_a_causal_lm_and_frozen_reads_it(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(f'{{"text": "the {c} circle is {s}"}}\n' for c in ("red", "blue", "green")
                            for s in ("big", "small")))
    path = _config(tmp_path, steps=3)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["train"] = {"name": "text_file", "args": {"path": str(docs)}}
    path.write_text(yaml.safe_dump(raw))
    summary = run_experiment(path, tmp_path / "run")
    assert summary["models"][0]["train"]["steps"] == 3
    from mmfm.checkpoints.language_model import language_model_config
    assert language_model_config(str(tmp_path / "run" / "lm" / "model"))["n_embd"] == 16


@pytest.mark.parametrize("change, message", [
    ({"tokenizer": None}, "tokenizer: a causal_lm model needs one"),
    ({"lora": "all"}, "lora: LoRA applies to CLIP-family models"),
    ({"config": {"family": "causal_lm", "lm": "gpt2"}}, "causal_lm.lm: expected a mapping"),
])
def test_bad_causal_lm_configs_fail_in_one_line(tmp_path, change, message):
    with pytest.raises(ValueError, match=message) as e:
        load_experiment(_config(tmp_path, **change))
    assert "Traceback" not in str(e.value)


def test_bad_text_files_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        get_dataset("text_file", path=str(bad))
    with pytest.raises(FileNotFoundError, match="is not a file"):
        get_dataset("text_file", path=str(tmp_path / "none.txt"))
