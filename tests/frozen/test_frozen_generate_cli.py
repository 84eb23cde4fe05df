"""``mmfm caption`` / ``mmfm vqa`` over many files: unreadable images are skipped and named, bad values refused."""
from __future__ import annotations

import PIL.Image
import pytest

from mmfm.cli import main
from mmfm.frozen.io import save_frozen


@pytest.fixture
def model_and_images(tiny_model, tokenizer, tmp_path):
    save_frozen(tiny_model, tmp_path / "model", tokenizer)
    good = []
    for k in range(2):
        good.append(tmp_path / f"good{k}.png")
        PIL.Image.new("RGB", (40, 40), (200, 60 * k, 30)).save(good[-1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    return tmp_path / "model", good, broken, tmp_path / "missing.png"


def test_caption_and_vqa_skip_unreadable_images_and_name_them(model_and_images, capsys):
    model, good, broken, missing = model_and_images
    files = [str(good[0]), str(broken), str(missing), str(good[1])]
    assert main(["caption", str(model), *files, "--max-new-tokens", "3", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(good[0]), str(good[1])]
    assert "skipped 2 unreadable image(s)" in err and str(broken) in err and str(missing) in err
    assert err.count("\n") == 1
    assert main(["vqa", str(model), *files, "what colour is it?", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(good[0]), str(good[1])]
    assert "skipped 2 unreadable image(s)" in err


def test_vqa_on_one_image_prints_the_answer_alone_and_no_readable_image_is_an_error(model_and_images, capsys):
    model, good, broken, missing = model_and_images
    assert main(["vqa", str(model), str(good[0]), "what shape is this?", "--max-new-tokens", "2",
                 "--device", "cpu"]) == 0
    assert "\t" not in capsys.readouterr().out
    assert main(["caption", str(model), str(broken), str(missing), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 image(s) could be read" in err and "Traceback" not in err


@pytest.mark.parametrize("option, value", [("--num-beams", "0"), ("--top-p", "5"), ("--top-p", "0"),
                                           ("--max-new-tokens", "0"), ("--temperature", "-1")])
def test_out_of_range_generation_options_are_usage_errors(option, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["caption", "MODEL", "a.png", option, value])
    assert exit_.value.code == 2 and f"argument {option}" in capsys.readouterr().err


def test_prompt_too_long_for_the_lm_is_one_line(model_and_images, capsys):
    model, good, _, _ = model_and_images
    assert main(["caption", str(model), str(good[0]), "--prompt", "a red circle " * 30, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "positions" in err and "Traceback" not in err and err.count("\n") == 1
