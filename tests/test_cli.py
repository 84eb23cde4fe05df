import pytest
import torch

from mmfm.cli import main


def test_models_lists_registered_configs(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("ViT-B-32", "ViT-L-14", "RN50", "RN101", "RN-cifar10"):
        assert name in out


def test_info_prints_parameter_table_without_download(capsys):
    assert main(["info", "ViT-B-32"]) == 0
    out = capsys.readouterr().out
    assert "151,277,313" in out and "trainable" in out and "fp16" in out and "GFLOP" in out


def test_info_unknown_model_is_a_clear_error(capsys):
    assert main(["info", "ViT-B-33"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_eval_command_runs_zero_shot_and_writes_report(tmp_path, capsys):
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "digits", "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    assert "Zero-shot: ViT-tiny-test on digits" in capsys.readouterr().out
    assert (tmp_path / "results.json").is_file()


def test_eval_missing_dataset_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "cifar10",
                 "--data-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "Traceback" not in err
    assert "--download" in err and err.count("\n") == 1      # the flag to use, on one line


def test_dataset_arguments_it_does_not_take_are_named(tmp_path, capsys):
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "digits",
                 "--annotations", str(tmp_path / "x.csv")]) == 2
    err = _one_line_error(capsys)
    assert "dataset 'digits' does not take ['annotations']" in err


# ------------------------------------------------------------------------------------------
# Your own data through the command line: image folder + annotations, shards, evaluation.
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def make_folder(root, n=6):
    """n small images, alternately red and blue, and captions.csv (path, caption, label) in root."""
    import PIL.Image
    (root / "img").mkdir(parents=True)
    rows = ["path,caption,label"]
    for k in range(n):
        name = list(COLOURS)[k % 2]
        PIL.Image.new("RGB", (24, 24), COLOURS[name]).save(root / "img" / f"{k}.png")
        rows.append(f"img/{k}.png,a {name} square,{name}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root


def test_shards_command_writes_shards_and_reads_captions_from_the_working_directory(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "data")
    # the captions file lives outside the image folder, next to where the user types the command
    (tmp_path / "data" / "captions.csv").rename(tmp_path / "my_captions.csv")
    monkeypatch.chdir(tmp_path)
    assert main(["shards", "--images", "data", "--captions", "my_captions.csv", "--out", "shards",
                 "--maxcount", "4"]) == 0
    assert "wrote 6 sample(s) in 2 shard(s) to shards" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def test_eval_reads_the_shards_that_mmfm_shards_writes(tmp_path, capsys):
    import json
    make_folder(tmp_path / "data")
    assert main(["shards", "--images", str(tmp_path / "data"), "--captions", str(tmp_path / "data" / "captions.csv"),
                 "--out", str(tmp_path / "shards"), "--maxcount", "4"]) == 0
    for kind in ("retrieval", "zeroshot"):
        out = tmp_path / kind
        assert main(["eval", kind, "--model", "ViT-tiny-test", "--dataset", "shards", "--data-root",
                     str(tmp_path / "shards"), "--out", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
        result = json.loads((out / "results.json").read_text())["results"][0]
        if kind == "retrieval":
            assert result["num_images"] == 6 and result["num_texts"] == 6
        else:   # the labels of the CSV became the classes of the shards' zero-shot task
            assert result["config"]["task"] == "label" and result["metrics"]["classnames"] == ["blue", "red"]
            assert result["metrics"]["num_samples"] == 6


def test_shard_folder_reads_the_shards_its_metadata_lists_not_stale_ones(tmp_path, capsys):
    from mmfm.data import get_dataset
    data = make_folder(tmp_path / "data")
    args = ["shards", "--images", str(data), "--out", str(tmp_path / "shards"), "--maxcount", "4"]
    assert main([*args, "--captions", str(data / "captions.csv")]) == 0
    assert len(get_dataset("shards", root=tmp_path / "shards", split="test")) == 6
    # rewritten with fewer samples: shard-000001.tar of the first run is still there
    rows = (data / "captions.csv").read_text().splitlines()
    (data / "two.csv").write_text("\n".join(rows[:3]) + "\n")
    assert main([*args, "--captions", str(data / "two.csv")]) == 0
    assert (tmp_path / "shards" / "shard-000001.tar").is_file()
    assert len(get_dataset("shards", root=tmp_path / "shards", split="test")) == 2
    with pytest.raises(ValueError, match="no train split"):
        get_dataset("shards", root=tmp_path / "shards", split="train")


def test_eval_custom_folder_with_or_without_an_annotations_file(tmp_path, monkeypatch, capsys):
    import json
    data = make_folder(tmp_path / "data")
    out = tmp_path / "found"
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "custom", "--data-root", str(data),
                 "--out", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())["results"][0]
    assert result["metrics"]["classnames"] == ["blue", "red"] and result["metrics"]["num_samples"] == 6
    # --annotations names the file, relative to the working directory
    rows = (data / "captions.csv").read_text().splitlines()
    (tmp_path / "four.csv").write_text("\n".join(rows[:5]) + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "retrieval", "--model", "ViT-tiny-test", "--dataset", "custom", "--data-root", "data",
                 "--annotations", "four.csv", "--out", "named", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "named" / "results.json").read_text())["results"][0]["num_images"] == 4


def test_eval_refuses_to_train_and_test_on_the_same_custom_file(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    assert main(["eval", "linear-probe", "--model", "ViT-tiny-test", "--dataset", "custom", "--data-root",
                 str(data), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no train annotations" in err and "train.csv" in err and "\n" not in err


# ------------------------------------------------------------------------------------------
# Every failure is one line: user errors exit 2, anything else names its type; --debug shows the traceback.
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_yaml_syntax_error_in_a_config_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\nmodels: [1, 2\n")
    assert main(["run", str(config)]) == 2
    assert "mmfm run: error:" in _one_line_error(capsys)


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("keep me")
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "digits", "--out", str(afile)]) == 2
    assert "is a file" in _one_line_error(capsys)
    assert afile.read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_device_without_a_gpu_is_a_user_error(capsys):
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "digits", "--device", "cuda"]) == 2
    assert "--device cpu" in _one_line_error(capsys)
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "digits", "--device", "gpu"]) == 2
    assert "not a device" in _one_line_error(capsys)


def _raise_in_models_command(monkeypatch, exc):
    def boom():
        raise exc
    monkeypatch.setattr("mmfm.models.list_models", boom)


def test_unexpected_error_names_its_type_and_debug_shows_the_traceback(monkeypatch, capsys):
    _raise_in_models_command(monkeypatch, RuntimeError("shape mismatch\nin layer 3"))
    assert main(["models"]) == 1
    err = _one_line_error(capsys)
    assert "RuntimeError: shape mismatch in layer 3" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["models", "--debug"])
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["--debug", "models"])
    monkeypatch.setenv("MMFM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["models"])


def test_training_divergence_is_a_user_error_and_ctrl_c_exits_130(monkeypatch, capsys):
    from mmfm.train.trainer import TrainingDiverged
    _raise_in_models_command(monkeypatch, TrainingDiverged("loss is nan at step 7; lower the learning rate"))
    assert main(["models"]) == 2
    assert "error: loss is nan at step 7; lower the learning rate" in _one_line_error(capsys)
    _raise_in_models_command(monkeypatch, KeyboardInterrupt())
    assert main(["models"]) == 130
    assert _one_line_error(capsys) == "mmfm models: interrupted\n"


def test_gpu_out_of_memory_says_what_to_lower(monkeypatch, capsys):
    _raise_in_models_command(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\n"
                                                                  "(GPU 0; 79.15 GiB total capacity)"))
    assert main(["models"]) == 2
    err = _one_line_error(capsys)
    assert "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in err and "--batch-size" in err


def test_threads_are_set_before_any_work(capsys):
    before = torch.get_num_threads()
    try:
        # the dataset name is wrong: the command stops at once, after setting the threads
        assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "nope", "--threads", "1"]) == 2
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "zeroshot", "--dataset", "digits", "--threads", "0"])
    assert exit_.value.code == 2 and "must be an integer >= 1" in capsys.readouterr().err


def test_version_and_defaults_in_help(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mmfm {version('mmfm')}"
    with pytest.raises(SystemExit):
        main(["shards", "--help"])
    assert "(default: 1000)" in " ".join(capsys.readouterr().out.split())


def test_task_colour_is_accepted_where_color_is():
    from mmfm.data import get_dataset
    from mmfm.eval.zero_shot import resolve_task
    # resolve_task is what `mmfm eval zeroshot --task` goes through
    shapes = get_dataset("shapes", split="test", size=8, image_size=32)
    assert resolve_task(shapes, "colour") == resolve_task(shapes, "color")
    assert resolve_task(shapes, "colour").name == "color" and "colour" in shapes.zero_shot_tasks()
    with pytest.raises(KeyError, match="no zero-shot task 'flavour'"):
        resolve_task(shapes, "flavour")


def test_eval_fewshot_method_shots_and_seeds(tmp_path, capsys):
    code = main(["eval", "fewshot", "--model", "ViT-tiny-test", "--dataset", "digits", "--method", "tip_adapter",
                 "--shots", "2", "4", "--seeds", "0", "1", "--out", str(tmp_path)])
    assert code == 0
    import json
    result = json.loads((tmp_path / "results.json").read_text())["results"][0]
    assert result["method"] == "tip_adapter"
    assert sorted(result["per_shot"]) == ["2", "4"] and result["per_shot"]["4"]["seeds"] == [0, 1]
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "digits", "--method", "coop"]) == 2
    assert "only apply to `mmfm eval fewshot`" in capsys.readouterr().err


def test_run_overrides_name_the_bad_key(tmp_path, capsys):
    """`mmfm run --set`: a bad value names its key, a missing '=' names the assignment; both exit 2 before
    anything runs. A config of the retired Frozen demo schema (`frozen_demo:`) is refused by its key."""
    config = tmp_path / "c.yaml"
    config.write_text("name: tiny\nseed: 0\nmodels: []\n")
    key = "seed"
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--set", f"{key}=many"]) == 2
    err = capsys.readouterr().err
    assert key in err
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--set", key]) == 2
    assert f"override {key!r} is not KEY=VALUE" in capsys.readouterr().err
    config.write_text("frozen_demo:\n  name: tiny\n")
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "unknown key 'frozen_demo'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_inference_commands_keep_large_blocks_and_others_do_not(monkeypatch, tmp_path, capsys):
    # Inference commands reuse their activations in place (mmfm.util.malloc); training sets its own policy,
    # and MMFM_KEEP_LARGE_BLOCKS=0 leaves glibc's default. Recorded, not applied: the test process keeps its own.
    import mmfm.util.malloc as malloc
    calls = []
    monkeypatch.setattr(malloc, "keep_large_blocks", lambda: calls.append(1) or True)
    monkeypatch.delenv("MMFM_KEEP_LARGE_BLOCKS", raising=False)
    assert main(["classify", str(tmp_path / "missing.png"), "--model", "ViT-tiny-test", "--labels", "a,b"]) == 2
    assert calls == [1]
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert main(["info", "ViT-tiny-test"]) == 0
    assert calls == [1]
    monkeypatch.setenv("MMFM_KEEP_LARGE_BLOCKS", "0")
    assert main(["embed", str(tmp_path), "--model", "ViT-tiny-test", "--out", str(tmp_path / "i")]) == 2
    assert calls == [1]


def test_eval_names_a_text_corpus_as_such_and_its_help_does_not_list_them(capsys):
    # shapes_text and text_file are a causal LM's training documents: no images for an evaluation to read.
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "shapes_text"]) == 2
    err = _one_line_error(capsys)
    assert "shapes_text is a text corpus (documents, no images)" in err and "family: causal_lm" in err
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    listed = capsys.readouterr().out.split("datasets:")[1].split("examples:")[0]
    assert "shapes," in listed and "digits" in listed
    assert "shapes_text" not in listed and "text_file" not in listed
