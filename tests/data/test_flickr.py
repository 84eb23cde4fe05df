"""Flickr30k (Karpathy split) and Conceptual Captions TSV readers, on tiny fakes."""
import json

import PIL.Image
import pytest

from mmfm.data.flickr import ConceptualCaptionsTSV, Flickr30k, cc3m_tsv, flickr30k


def _jpg(path, color=(0, 128, 255)):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", (20, 16), color).save(path)


@pytest.fixture
def flickr_root(tmp_path):
    images = []
    for i, split in enumerate(["train", "train", "val", "test", "test"]):
        name = f"{1000 + i}.jpg"
        _jpg(tmp_path / "flickr30k-images" / name, color=(40 * i, 0, 0))
        images.append({"filename": name, "split": split, "imgid": i,
                       "sentences": [{"raw": f"image {i} caption {j} ", "tokens": []} for j in range(5)]})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return tmp_path


def test_flickr30k_splits_and_captions(flickr_root):
    test = flickr30k(flickr_root, split="test")
    assert len(test) == 2 and len(Flickr30k(flickr_root, split="train")) == 2
    assert test.get_captions(0) == [f"image 3 caption {j}" for j in range(5)]    # stripped
    s = test[1]
    assert s.image.mode == "RGB" and s.image.getpixel((0, 0))[0] == 160 and len(s.captions) == 5
    assert s.label is None and test.classes is None
    assert Flickr30k(flickr_root, split="test", max_captions=2).get_captions(0) == ["image 3 caption 0",
                                                                                 "image 3 caption 1"]
    from mmfm.data import all_captions
    caps, owner = all_captions(test)
    assert len(caps) == 10 and owner == [0] * 5 + [1] * 5


def test_flickr30k_errors(tmp_path, flickr_root):
    with pytest.raises(FileNotFoundError, match="dataset_flickr30k.json"):
        Flickr30k(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="cannot be downloaded"):
        Flickr30k(flickr_root, download=True)
    with pytest.raises(ValueError, match="split"):
        Flickr30k(flickr_root, split="dev")


def test_flickr30k_custom_image_dir_and_coco_filepath(tmp_path):
    _jpg(tmp_path / "pics" / "val2014" / "a.jpg")
    ann = tmp_path / "karpathy_coco.json"
    ann.write_text(json.dumps({"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "restval", "sentences": [{"raw": "x"}]},
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "y"}]}]}))
    train = Flickr30k(tmp_path, split="train", annotations=ann, images_dir=tmp_path / "pics")
    assert len(train) == 1 and train.get_captions(0) == ["x"]        # restval counts as train
    assert train[0].image.size == (20, 16)


def test_cc3m_tsv_with_urls_and_missing_images(tmp_path):
    _jpg(tmp_path / "images" / "cat.jpg")
    _jpg(tmp_path / "images" / "dog.png")
    (tmp_path / "Validation_GCC-1.1.0-Validation.tsv").write_text(
        "a cat on a sofa\thttps://example.com/x/cat.jpg?size=large\n"
        "a dead link\thttp://example.com/gone.jpg\n"
        "a dog\thttp://example.com/dog.png\n")
    ds = cc3m_tsv(tmp_path, split="val")
    assert len(ds) == 2 and ds.num_missing == 1
    assert [ds.get_captions(i) for i in range(2)] == [["a cat on a sofa"], ["a dog"]]
    assert ds[0].image.mode == "RGB"
    strict = ConceptualCaptionsTSV(tmp_path / "Validation_GCC-1.1.0-Validation.tsv", image_root=tmp_path / "images",
                                   skip_missing=False)
    assert len(strict) == 3
    with pytest.raises(FileNotFoundError):
        strict[1]
    mapped = ConceptualCaptionsTSV(tmp_path / "Validation_GCC-1.1.0-Validation.tsv", image_root=tmp_path,
                                   url_to_path=lambda url, row: f"images/{['cat.jpg', 'x', 'dog.png'][row]}")
    assert len(mapped) == 2


def test_cc3m_tsv_with_header_and_local_paths(tmp_path):
    _jpg(tmp_path / "imgs" / "0001.jpg")
    tsv = tmp_path / "val.tsv"
    tsv.write_text("filepath\ttitle\nimgs/0001.jpg\ta red square\n")
    ds = ConceptualCaptionsTSV(tsv, caption_col="title", path_col="filepath")
    assert len(ds) == 1 and ds.get_captions(0) == ["a red square"]
    with pytest.raises(ValueError, match="not in the TSV header"):
        ConceptualCaptionsTSV(tsv, caption_col="caption", path_col="filepath")
    with pytest.raises(FileNotFoundError, match="no caption TSV"):
        cc3m_tsv(tmp_path, split="train")


def test_retrieval_on_fake_flickr(flickr_root):
    import torch
    from mmfm.eval import retrieval
    from mmfm.api import create_model
    torch.manual_seed(0)
    r = retrieval(create_model("ViT-tiny-test"), Flickr30k(flickr_root, split="test"), progress=False)
    assert r.num_images == 2 and r.num_texts == 10
    # 2 images and 10 captions: the right image is always in the top 5, some right caption in the top 6.
    assert r.metrics["t2i_R@5"] == 1.0 and r.metrics["i2t_R@10"] == 1.0
    assert r.image_ranks.max() <= 6
