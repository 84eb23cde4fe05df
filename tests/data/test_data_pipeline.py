"""ImageTextView / collate_skip_none / all_captions."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from mmfm.data import (
    ImageTextView,
    MultimodalDataset,
    Sample,
    Shapes,
    ZeroShotTask,
    all_captions,
    available_datasets,
    collate_skip_none,
    register_dataset,
)


class Toy(MultimodalDataset):
    """Three images: two captions, no captions (label only), one caption."""

    name = "toy"

    def __init__(self):
        self.classes = ["cat", "dog"]
        self.templates = ["a photo of a {}.", "a {}."]
        self.captions = [["first a", "second a"], [], ["only c"]]

    def __len__(self):
        return 3

    def get_sample(self, i):
        return Sample(Image.new("RGB", (8, 8), (i * 50, 0, 0)), list(self.captions[i]), label=i % 2)


def caption_of(view, i, tokenizer, captions):
    """Which caption (by text) did the view tokenize for item i?"""
    text = view[i]["text"]
    return next(c for c in captions if torch.equal(tokenizer([c])[0], text))


def test_item_format(tokenizer):
    view = ImageTextView(Shapes(size=8, image_size=32), transforms.ToTensor(), tokenizer)
    item = view[3]
    assert set(item) == {"image", "text", "label", "index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert item["text"].dtype == torch.long and item["text"].shape == (16,)
    assert isinstance(item["label"], int) and item["index"] == 3
    assert len(view) == 8
    with_attrs = ImageTextView(Shapes(size=8), None, tokenizer, return_attributes=True)[3]
    assert with_attrs["attributes"] == Shapes(size=8)[3].attributes


def test_random_caption_is_deterministic_per_seed_epoch_index(tokenizer):
    ds = Shapes(size=60)
    a = ImageTextView(ds, None, tokenizer, seed=5)
    b = ImageTextView(Shapes(size=60), None, tokenizer, seed=5)
    random.seed(123)
    torch.manual_seed(123)
    first = [a[i]["text"] for i in range(60)]
    random.seed(999)  # the global RNG must not matter
    torch.manual_seed(999)
    assert all(torch.equal(t, b[i]["text"]) for i, t in enumerate(first))
    # reading order does not matter either
    assert all(torch.equal(first[i], a[i]["text"]) for i in reversed(range(60)))

    a.set_epoch(1)
    changed = sum(not torch.equal(first[i], a[i]["text"]) for i in range(60))
    assert changed > 20  # 4 captions: ~3/4 of draws change
    a.set_epoch(0)
    assert all(torch.equal(first[i], a[i]["text"]) for i in range(60))
    other_seed = ImageTextView(ds, None, tokenizer, seed=6)
    assert sum(not torch.equal(first[i], other_seed[i]["text"]) for i in range(60)) > 20


def test_random_mode_uses_every_caption_over_epochs(tokenizer):
    ds = Toy()
    view = ImageTextView(ds, None, tokenizer)
    seen = set()
    for epoch in range(30):
        view.set_epoch(epoch)
        seen.add(caption_of(view, 0, tokenizer, ds.captions[0]))
    assert seen == {"first a", "second a"}


def test_label_only_sample_gets_template_caption(tokenizer):
    ds = Toy()
    view = ImageTextView(ds, None, tokenizer)
    options = ["a photo of a dog.", "a dog."]
    drawn = set()
    for epoch in range(20):
        view.set_epoch(epoch)
        drawn.add(caption_of(view, 1, tokenizer, options))
    assert drawn == set(options)
    first = ImageTextView(ds, None, tokenizer, caption_mode="first")
    assert torch.equal(first[1]["text"], tokenizer(["a photo of a dog."])[0])
    assert torch.equal(first[0]["text"], tokenizer(["first a"])[0])


def test_all_mode_and_collate(tokenizer):
    ds = Toy()
    view = ImageTextView(ds, None, tokenizer, caption_mode="all")
    assert view[0]["text"].shape == (2, 16)
    batch = collate_skip_none([view[0], None, view[1], view[2]])
    assert batch["n_skipped"] == 1
    assert batch["image"].shape == (3, 3, 8, 8)
    assert batch["text"].shape == (4, 16)
    assert batch["caption_image_index"].tolist() == [0, 0, 1, 2]
    caps, owners = all_captions(ds)
    assert caps == ["first a", "second a", "a photo of a dog.", "only c"] and owners == [0, 0, 1, 2]
    assert torch.equal(batch["text"], tokenizer(caps))


def test_raw_text_without_tokenizer():
    view = ImageTextView(Toy(), None, None, caption_mode="first")
    batch = collate_skip_none([view[0], view[2]])
    assert batch["text"] == ["first a", "only c"]
    assert batch["label"].tolist() == [0, 0]


def test_collate_all_skipped():
    batch = collate_skip_none([None, None])
    assert batch["n_skipped"] == 2 and batch["index"].numel() == 0


def test_dataloader_with_workers(tokenizer):
    view = ImageTextView(Shapes(size=40, image_size=32), transforms.ToTensor(), tokenizer, seed=1)
    loader = DataLoader(view, batch_size=8, num_workers=2, collate_fn=collate_skip_none)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 40 and all(b["n_skipped"] == 0 for b in batches)
    flat = torch.cat([b["text"] for b in batches])
    assert all(torch.equal(flat[i], view[i]["text"]) for i in range(40))  # workers draw the same captions


def test_bad_caption_mode():
    with pytest.raises(ValueError, match="caption_mode"):
        ImageTextView(Toy(), None, None, caption_mode="longest")


def test_zero_shot_task_defaults_and_registry():
    tasks = Toy().zero_shot_tasks()
    assert tasks == {"label": ZeroShotTask("label", ["cat", "dog"], ["a photo of a {}.", "a {}."], None)}
    assert Toy()[-1].label == 0
    with pytest.raises(IndexError):
        Toy()[3]
    assert len(list(Toy())) == 3
    register_dataset("toy-test", Toy)
    assert "toy-test" in available_datasets()
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("toy-test", Shapes)
    from mmfm.data import get_dataset

    assert isinstance(get_dataset("TOY-test"), Toy)
    with pytest.raises(ValueError, match="available"):
        get_dataset("imagenet-22k")
    from mmfm.data import is_text_corpus, text_file
    assert is_text_corpus("shapes_text") and is_text_corpus("Text_File") and not is_text_corpus("toy-test")
    register_dataset("toy-docs", text_file, text_corpus=True)
    assert is_text_corpus("toy-docs")
    register_dataset("toy-docs", Toy, overwrite=True)     # replaced by an image dataset: no longer text
    assert not is_text_corpus("toy-docs")


def test_error_inside_transform_is_skipped(tokenizer):
    """Lazily decoded images fail in the transform; that is skipped as well."""

    def flaky(image):
        if image.getpixel((0, 0))[0] == 50:  # Toy sample 1
            raise OSError("image file is truncated")
        return transforms.functional.to_tensor(image)

    view = ImageTextView(Toy(), flaky, tokenizer)
    assert view[1] is None
    batch = collate_skip_none([view[i] for i in range(3)])
    assert batch["n_skipped"] == 1 and batch["index"].tolist() == [0, 2]


def test_view_passes_through_label_space(tokenizer):
    view = ImageTextView(Shapes(size=4), None, tokenizer)
    assert view.classes == Shapes(size=4).classes
    assert set(view.zero_shot_tasks()) >= {"shape", "color"}


def test_with_real_tokenizer_if_available():
    tok = pytest.importorskip("mmfm.tokenizer")
    view = ImageTextView(Shapes(size=4), None, tok.tokenize, caption_mode="first")
    item = view[0]
    assert item["text"].dtype == torch.long and item["text"].dim() == 1
    assert torch.equal(item["text"], tok.tokenize([Shapes(size=4)[0].captions[0]])[0])
