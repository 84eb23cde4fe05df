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
