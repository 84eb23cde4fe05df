"""``mmfm classify``: zero-shot labels of image files, as a table or JSON (issue 18)."""
from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from mmfm.checkpoints import save_pretrained
from mmfm.cli import main
from mmfm.data.transforms import image_transform
from mmfm.api import create_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)   # a temperature that spreads the probabilities (exp(2) = 7.4)
    save_pretrained(model, root / "model")
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate([(40, 32), (64, 64)]):
        path = root / f"img{i}.png"
        PIL.Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    return model, root / "model", images


def test_classify_json_lists_each_image_with_its_labels_by_probability(saved, capsys):
    model, folder, images = saved
    labels = ["a cat", "a dog", "a red circle"]
    assert main(["classify", *images, "--model", "ViT-tiny-test", "--pretrained", str(folder),
                 "--labels", ", ".join(labels), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == images
    # What CLIP computes: softmax over exp(logit_scale) * cosine(image, label prompt).
    tf = image_transform(32)
    with torch.no_grad():
        img = model.encode_image(torch.stack([tf(PIL.Image.open(p).convert("RGB")) for p in images]), normalize=True)
        txt = model.encode_text(model.get_tokenizer()(labels), normalize=True)
        want = (model.logit_scale.exp() * img @ txt.T).softmax(-1)
    for row, probs in zip(rows, want):
        got = {item["label"]: item["probability"] for item in row["labels"]}
        assert [item["label"] for item in row["labels"]] == [labels[i] for i in probs.argsort(descending=True)]
        np.testing.assert_allclose([got[label] for label in labels], probs.numpy(), atol=1e-5)


def test_classify_table_with_a_dataset_prompt_ensemble(saved, capsys):
    _, folder, images = saved
    assert main(["classify", images[0], "--model", "ViT-tiny-test", "--pretrained", str(folder),
                 "--classes", "cifar10", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and len(lines) == 4
    probs = [float(line.split("%")[0]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 100 for p in probs)
    assert all(line.split("%")[1].strip() in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                              "horse", "ship", "truck") for line in lines[1:])


@pytest.mark.parametrize("argv, message", [
    (["--labels", "only one"], "at least two"),
    (["--classes", "nonsense"], "no class list"),
    (["--labels", "a,b", "missing.png"], "no image file missing.png"),
])
def test_classify_bad_input_is_one_line_and_exit_2(saved, capsys, argv, message):
    _, folder, images = saved
    files = [] if "missing.png" in argv else [images[0]]
    assert main(["classify", *files, "--model", "ViT-tiny-test", "--pretrained", str(folder), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
