"""The Trainer without an output folder: an inner loop (a few-shot episode run many times) that trains the
model and writes nothing, resumes nothing, measures no latency and leaves the process's RNG to its caller."""
from pathlib import Path

import pytest
import torch

from mmfm.api import create_model
from mmfm.train import TrainConfig, Trainer


def _pairs(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(3, 32, 32, generator=g), "text": torch.randint(1, 1000, (16,), generator=g)}
            for _ in range(n)]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"max_steps": 3, "batch_size": 4, "lr": 1e-3, "device": "cpu", **kw})


def test_no_output_folder_trains_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)   # anything written relative to the working directory would land here
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # every output switched on: TensorBoard, a checkpoint and a validation (best.pt) each step
    cfg = _cfg(ckpt_every=1, eval_every=1, log_every=1, tensorboard=True)
    result = Trainer(model, _pairs(16), cfg, None, val_data=_pairs(4, seed=1)).fit()
    assert list(tmp_path.iterdir()) == []
    assert result.out_dir is None and result.checkpoint is None
    assert result.latency == {}                     # latency is measured only for a run with a folder
    assert result.steps == 3 and result.final_loss is not None
    assert "val_loss" in result.val                 # validation still runs, in memory
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "train" not in capsys.readouterr().err   # no progress bar unless the config asks for one


def test_no_output_folder_shows_progress_only_when_asked(capsys):
    torch.manual_seed(0)
    Trainer(create_model("ViT-tiny-test"), _pairs(8), _cfg(max_steps=1, progress=True), None).fit()
    assert "train" in capsys.readouterr().err


def test_no_output_folder_neither_reseeds_nor_draws_from_the_process_rng():
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")   # no dropout: training itself draws nothing
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    Trainer(model, _pairs(8), _cfg(max_steps=2, seed=7), None).fit()
    assert torch.equal(torch.get_rng_state(), state)   # the caller's stream goes on where it was


def test_no_output_folder_leaves_the_process_allocator_policy_alone(tmp_path, monkeypatch):
    # An inner loop runs inside an evaluation, whose command chose the process's allocator policy
    # (mmfm.util.malloc): only a run with its own folder sets the training one.
    from mmfm.train import trainer
    calls = []
    monkeypatch.setattr(trainer, "return_large_blocks_to_the_os", lambda: calls.append(1) or True)
    torch.manual_seed(0)
    Trainer(create_model("ViT-tiny-test"), _pairs(8), _cfg(max_steps=1), None).fit()
    assert calls == []
    Trainer(create_model("ViT-tiny-test"), _pairs(8), _cfg(max_steps=1, progress=False, tensorboard=False),
            tmp_path / "run").fit()
    assert calls == [1]


def test_no_output_folder_runs_are_reproducible_from_the_callers_seed():
    def run():
        torch.manual_seed(0)
        model = create_model("ViT-tiny-test")
        return Trainer(model, _pairs(8), _cfg(max_steps=2), None).fit().final_loss, model.state_dict()

    (loss_a, a), (loss_b, b) = run(), run()
    assert loss_a == loss_b
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_an_inner_loop_on_one_rank_of_a_ddp_job_runs_alone(tmp_path, run_ranks):
    """An evaluation on the main rank during DDP training may train an inner loop (few-shot LoRA); the other
    ranks are not in it, so it must not wrap the model in DDP or all-reduce anything (that would hang)."""
    worker = Path(__file__).with_name("ddp_inner_loop_worker.py")
    alone = run_ranks(worker, tmp_path / "alone.pt", 1)
    in_ddp = run_ranks(worker, tmp_path / "ddp.pt", 2, timeout=120)
    assert in_ddp["loss"] == alone["loss"]
