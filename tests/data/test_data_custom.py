"""CustomDataset: folder + CSV/JSONL, validation before training, corrupt images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from mmfm.data import CustomDataset, ImageTextView, all_captions, collate_skip_none, get_dataset


def make_images(root: Path, names: list[str], size: int = 16) -> None:
    for k, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (20 * k % 256, 100, 200)).save(path)


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def test_csv_rows_with_same_path_become_one_sample(tmp_path):
    make_images(tmp_path, ["img/a.png", "img/b.jpg"])
    write_csv(
        tmp_path / "captions.csv",
        "path,caption",
        ["img/a.png,a blue square", "img/b.jpg,another picture", 'img/a.png,"a square, blue"'],
    )
    ds = CustomDataset(tmp_path)
    assert len(ds) == 2
    a = ds[0]
    assert a.captions == ["a blue square", "a square, blue"]
    assert a.image.mode == "RGB" and a.image.size == (16, 16) and a.label is None
    assert ds.classes is None and ds.zero_shot_tasks() == {}
    assert all_captions(ds) == (["a blue square", "a square, blue", "another picture"], [0, 0, 1])


def test_jsonl_with_labels_and_caption_lists(tmp_path):
    make_images(tmp_path, ["x.png", "y.png", "z.png"])
    rows = [
        {"image": "x.png", "caption": "a cat", "label": "cat"},
        {"image": "y.png", "captions": ["a dog", "a brown dog"], "label": "dog"},
        {"image": "z.png", "caption": "", "label": "cat"},
    ]
    (tmp_path / "ann.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = get_dataset("custom", root=tmp_path, annotations="ann.jsonl", label_column="label")
    assert ds.classes == ["cat", "dog"]
    assert [ds.get_label(i) for i in range(3)] == [0, 1, 0]
    assert ds[0].captions == ["a cat"] and ds[2].captions == []
    # the caption-less image gets a template caption
    caps, owners = all_captions(ds)
    assert caps[-1] == "a photo of a cat." and owners[-1] == 2
    assert ds.zero_shot_tasks()["label"].classnames == ["cat", "dog"]

    (tmp_path / "lists.jsonl").write_text(json.dumps({"image": "y.png", "captions": ["a dog", "a brown dog"]}))
    assert CustomDataset(tmp_path, "lists.jsonl")[0].captions == ["a dog", "a brown dog"]


def test_label_only_csv_sorted_numerically(tmp_path, tokenizer):
    make_images(tmp_path, ["a.png", "b.png", "c.png"])
    write_csv(tmp_path / "labels.csv", "filename,y", ["a.png,10", "b.png,2", "c.png,1"])
    ds = CustomDataset(tmp_path, "labels.csv", label_column="y", templates=["class {}"])
    assert ds.image_column == "filename" and ds.caption_column is None
    assert ds.classes == ["1", "2", "10"]
    assert [ds[i].label for i in range(3)] == [2, 1, 0]
    item = ImageTextView(ds, None, tokenizer, caption_mode="first")[0]
    assert item["label"] == 2 and item["text"].equal(tokenizer(["class 10"])[0])


def test_missing_annotations_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations file not found"):
        CustomDataset(tmp_path, "nope.csv")
    with pytest.raises(FileNotFoundError, match="image folder"):
        CustomDataset(tmp_path / "missing")


def test_missing_column_names_it_and_lists_available(tmp_path):
    make_images(tmp_path, ["a.png"])
    write_csv(tmp_path / "captions.csv", "path,text", ["a.png,hello"])
    with pytest.raises(ValueError) as err:
        CustomDataset(tmp_path)
    assert "'caption'" in str(err.value) and "['path', 'text']" in str(err.value)
    assert CustomDataset(tmp_path, caption_column="text")[0].captions == ["hello"]
    with pytest.raises(ValueError, match="'label'.*available columns"):
        CustomDataset(tmp_path, caption_column="text", label_column="label")
    with pytest.raises(ValueError, match="image column 'file'"):
        CustomDataset(tmp_path, image_column="file", caption_column="text")
    write_csv(tmp_path / "noimg.csv", "picture,caption", ["a.png,hi"])
    with pytest.raises(ValueError, match="no image column"):
        CustomDataset(tmp_path, "noimg.csv")


def test_missing_image_files_are_counted_and_listed(tmp_path):
    make_images(tmp_path, ["ok.png"])
    write_csv(tmp_path / "captions.csv", "path,caption", ["ok.png,fine", *[f"gone{k}.png,lost" for k in range(8)]])
    with pytest.raises(FileNotFoundError) as err:
        CustomDataset(tmp_path)
    msg = str(err.value)
    assert "8 of 9 image files" in msg and "gone0.png" in msg and "gone7.png" not in msg


def test_conflicting_labels_and_textless_rows_rejected(tmp_path):
    make_images(tmp_path, ["a.png", "b.png"])
    write_csv(tmp_path / "c.csv", "path,caption,label", ["a.png,x,cat", "a.png,y,dog"])
    with pytest.raises(ValueError, match="conflicting labels"):
        CustomDataset(tmp_path, "c.csv", label_column="label")
    write_csv(tmp_path / "d.csv", "path,caption", ["a.png,x", "b.png,"])
    with pytest.raises(ValueError, match="neither a caption nor a label"):
        CustomDataset(tmp_path, "d.csv")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_image_is_skipped_and_counted(tmp_path, num_workers, tokenizer):
    make_images(tmp_path, [f"{k}.png" for k in range(6)])
    (tmp_path / "2.png").write_bytes(b"definitely not a png")
    good = (tmp_path / "4.png").read_bytes()
    (tmp_path / "4.png").write_bytes(good[: len(good) // 2])  # truncated file
    write_csv(tmp_path / "captions.csv", "path,caption", [f"{k}.png,image {k}" for k in range(6)])
    ds = CustomDataset(tmp_path)  # validation does not decode images: no error yet
    view = ImageTextView(ds, None, tokenizer)
    assert view[2] is None and view[4] is None and view[0] is not None
    loader = DataLoader(view, batch_size=3, num_workers=num_workers, collate_fn=collate_skip_none)
    batches = list(loader)
    assert sum(b["n_skipped"] for b in batches) == 2
    seen = [int(i) for b in batches for i in b["index"]]
    assert seen == [0, 1, 3, 5]
    assert batches[0]["image"].shape == (2, 3, 16, 16)
    assert np.allclose(batches[0]["image"][0, 1].numpy(), 100 / 255)


@pytest.mark.parametrize(
    "values, dtype, suffix",
    [
        ([0, 32896, 65535], np.uint16, ".png"),  # 16-bit greyscale PNG (PIL mode I;16)
        ([0, 32896, 65535], np.int32, ".tif"),  # 16-bit data in a 32-bit integer image (mode I)
        ([0.0, 0.5, 1.0], np.float32, ".tif"),  # float image in 0..1 (mode F)
    ],
)
def test_high_bit_depth_and_float_greyscale_are_scaled_not_clipped(tmp_path, values, dtype, suffix):
    from mmfm.data import load_image
    from mmfm.data.transforms import image_transform

    path = tmp_path / f"grey{suffix}"
    Image.fromarray(np.array([values] * 3, dtype=dtype)).save(path)
    rgb = np.asarray(load_image(path))
    # black, mid grey and white stay black, mid grey and white (PIL's convert clips to white / truncates to black)
    assert rgb.shape == (3, 3, 3) and rgb[0, :, 0].tolist() == [0, 128, 255]
    assert (rgb == rgb[..., :1]).all()  # grey: R = G = B
    # PIL images handed straight to the transform get the same scaling
    with Image.open(path) as raw:
        x = image_transform(3, mean=(0, 0, 0), std=(1, 1, 1))(raw)
    assert x[0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0], abs=0.02)


def test_int32_beyond_16_bits_is_stretched_to_its_range(tmp_path):
    from mmfm.data.base import to_rgb

    image = Image.fromarray(np.array([[-100, 50, 200_000]], dtype=np.int32))
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 0, 255]


def test_custom_by_name_finds_each_splits_annotations_and_never_trains_on_the_test_file(tmp_path):
    make_images(tmp_path, [f"{k}.png" for k in range(6)])
    write_csv(tmp_path / "train.csv", "path,caption,label", [f"{k}.png,image {k},{k % 2}" for k in range(4)])
    write_csv(tmp_path / "test.csv", "path,caption,label", [f"{k}.png,image {k},{k % 2}" for k in (4, 5)])
    train, test = (get_dataset("custom", root=tmp_path, split=s) for s in ("train", "test"))
    assert (len(train), len(test)) == (4, 2) and train.classes == ["0", "1"]  # the label column, found by name
    assert len(get_dataset("custom", root=tmp_path, split="train", annotations="{split}.csv")) == 4
    # one file that is not per split serves as test data, never as training data
    with pytest.raises(ValueError, match="no train annotations"):
        get_dataset("custom", root=tmp_path, split="train", annotations="test.csv")
    assert len(get_dataset("custom", root=tmp_path, split="test", annotations="train.csv")) == 4
    with pytest.raises(FileNotFoundError, match="--annotations FILE"):
        get_dataset("custom", root=tmp_path, split="val")
