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
