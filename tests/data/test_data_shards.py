"""WebDataset shards: write -> read round trip, transforms, workers, corrupt records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from mmfm.data import (
    ImageTextView,
    Shapes,
    ShardDataset,
    collate_skip_none,
    shards_from_folder,
    write_shards,
)


def test_round_trip_png_is_exact(tmp_path):
    ds = Shapes(size=25, max_objects=2)
    written = write_shards(ds, tmp_path, maxcount=10, image_format="png")
    assert written.count == 25 and written.skipped == 0
    assert [p.rsplit("/", 1)[1] for p in written.paths] == [f"shard-00000{k}.tar" for k in range(3)]
    read = list(ShardDataset(written.pattern))
    assert len(read) == 25
    for i, s in enumerate(read):
        ref = ds[i]
        assert np.array_equal(np.asarray(s.image), np.asarray(ref.image))
        assert s.captions == ref.captions and s.label == ref.label and s.attributes == ref.attributes


def test_metadata_and_url_forms(tmp_path):
    ds = Shapes(size=12)
    written = write_shards(ds, tmp_path / "out", maxcount=5, prefix="shapes")
    meta = json.loads((tmp_path / "out" / "shapes.json").read_text())
    assert meta["num_samples"] == 12 and meta["classes"] == ds.classes
    for urls in (tmp_path / "out", str(tmp_path / "out" / "*.tar"), written.pattern, written.paths):
        shards = ShardDataset(urls)
        assert shards.num_samples == 12 and shards.classes == ds.classes
        assert shards.zero_shot_tasks() == ds.zero_shot_tasks()
    jpg = list(ShardDataset(written.pattern))
    diff = np.abs(np.asarray(jpg[0].image, dtype=int) - np.asarray(ds[0].image, dtype=int))
    assert diff.mean() < 3  # JPEG: close, not exact
    with pytest.raises(FileNotFoundError):
        ShardDataset(str(tmp_path / "nothing" / "*.tar"))


def test_with_transforms_matches_image_text_view(tmp_path, tokenizer):
    ds = Shapes(size=20)
    written = write_shards(ds, tmp_path, maxcount=8, image_format="png")
    stream = ShardDataset(written.pattern).with_transforms(None, tokenizer, seed=3)
    view = ImageTextView(ds, None, tokenizer, seed=3)
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        view.set_epoch(epoch)
        items = list(stream)
        assert [it["index"] for it in items] == list(range(20))
        for it in items:
            ref = view[it["index"]]
            assert torch.equal(it["text"], ref["text"]) and torch.equal(it["image"], ref["image"])
            assert it["label"] == ref["label"]


def test_dataloader_workers_split_shards(tmp_path, tokenizer):
    write_shards(Shapes(size=40, image_size=16), tmp_path, maxcount=10)
    stream = ShardDataset(tmp_path, shuffle_shards=True, shuffle_buffer=8).with_transforms(None, tokenizer)
    loader = DataLoader(stream, batch_size=6, num_workers=2, collate_fn=collate_skip_none)
    indices = sorted(int(i) for b in loader for i in b["index"])
    assert indices == list(range(40))  # every sample exactly once across workers


def test_shuffle_is_seeded_by_epoch(tmp_path):
    write_shards(Shapes(size=30, image_size=16), tmp_path, maxcount=5)
    order = lambda s: [i for i, _ in s.indexed_samples()]  # noqa: E731
    a = ShardDataset(tmp_path, shuffle_shards=True, shuffle_buffer=10, seed=1)
    b = ShardDataset(tmp_path, shuffle_shards=True, shuffle_buffer=10, seed=1)
    assert order(a) == order(b) and sorted(order(a)) == list(range(30))
    first = order(a)
    a.set_epoch(1)
    assert order(a) != first


def test_corrupt_record_is_skipped_and_counted(tmp_path, tokenizer):
    ds = Shapes(size=3, image_size=16)
    with wds.TarWriter(str(tmp_path / "bad-000000.tar")) as sink:
        for i in range(3):
            img = ds[i].image if i != 1 else None
            record = {"__key__": f"{i:09d}", "json": {"captions": ds[i].captions, "label": ds[i].label, "index": i}}
            if img is None:
                record["jpg"] = b"\xff\xd8 broken jpeg"
            else:
                buf = __import__("io").BytesIO()
                img.save(buf, format="PNG")
                record["png"] = buf.getvalue()
            sink.write(record)
    shards = ShardDataset(tmp_path / "bad-000000.tar")
    assert len(list(shards)) == 2 and shards.skipped == 1
    loader = DataLoader(shards.with_transforms(None, tokenizer), batch_size=3, collate_fn=collate_skip_none)
    (batch,) = list(loader)
    assert batch["n_skipped"] == 1 and batch["index"].tolist() == [0, 2]


def test_shards_from_folder_skips_unreadable_images(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for k in range(5):
        Image.new("RGB", (12, 12), (40 * k, 0, 0)).save(root / f"{k}.png")
    (root / "3.png").write_bytes(b"garbage")
    rows = "".join(f"{k}.png,red {k},c{k % 2}\n" for k in range(5))
    (root / "captions.csv").write_text("path,caption,label\n" + rows)
    written = shards_from_folder(root, "captions.csv", tmp_path / "shards", label_column="label", maxcount=2)
    assert written.count == 4 and written.skipped == 1
    samples = list(ShardDataset(tmp_path / "shards"))
    assert [s.captions for s in samples] == [["red 0"], ["red 1"], ["red 2"], ["red 4"]]
    assert [s.label for s in samples] == [0, 1, 0, 0]
    assert ShardDataset(tmp_path / "shards").classes == ["c0", "c1"]


def test_write_from_plain_sample_iterable(tmp_path):
    samples = (Shapes(size=4)[i] for i in range(4))
    written = write_shards(samples, tmp_path, image_format="png")
    assert written.count == 4 and len(written.paths) == 1
    assert [s.captions for s in ShardDataset(written.paths)] == [Shapes(size=4)[i].captions for i in range(4)]


def _png(image) -> bytes:
    buf = __import__("io").BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_bad_records_are_skipped_counted_and_named_by_shard_and_key(tmp_path, tokenizer, caplog):
    """One bad record must not kill a streaming run, and the warning must say where it is."""
    image = _png(Shapes(size=1, image_size=16)[0].image)
    records = [
        {"json": json.dumps({"captions": ["a red square"], "index": 0})},
        {},                                                   # no caption, no label: nothing to train on
        {"json": b'{"captions": ["unterminated'},             # bad JSON
        {"txt": b"caf\xe9 au lait"},                          # .txt that is not UTF-8
        {"cls": b"cat"},                                      # .cls that is not an integer
        {"json": json.dumps({"captions": "a cat", "index": 5})},   # one caption given as a string
        {"json": json.dumps({"captions": ["a blue circle"], "index": 6})},
    ]
    shard = tmp_path / "bad-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i, extra in enumerate(records):
            sink.write({"__key__": f"{i:09d}", "png": image, **extra})
    stream = ShardDataset(shard).with_transforms(None, tokenizer)
    with caplog.at_level("WARNING"):
        (batch,) = list(DataLoader(stream, batch_size=7, collate_fn=collate_skip_none))
    assert batch["n_skipped"] == 4 and batch["index"].tolist() == [0, 5, 6]
    assert torch.equal(batch["text"][1], tokenizer(["a cat"])[0])      # not 'a', ' ', 'c', 'a', 't'
    for key in ("000000001", "000000002", "000000003", "000000004"):
        assert any(key in r.getMessage() and str(shard) in r.getMessage() for r in caplog.records), key
    samples = ShardDataset(shard)
    assert [s.captions for s in samples] == [["a red square"], [], ["a cat"], ["a blue circle"]]
    assert samples.skipped == 3                                  # the undecodable ones


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("done", [3, 4])
def test_resume_at_continues_the_stream_at_the_exact_record(tmp_path, tokenizer, workers, done):
    """A resumed epoch yields exactly the batches an uninterrupted one had left, whatever batch it stopped
    at (odd or even: the DataLoader takes batch k from worker k % W) and with a seeded shuffle buffer."""
    write_shards(Shapes(size=40, image_size=8), tmp_path, maxcount=10)
    stream = ShardDataset(tmp_path, shuffle_shards=True, shuffle_buffer=6, seed=2).with_transforms(None, tokenizer)
    loader = DataLoader(stream, batch_size=4, num_workers=workers, collate_fn=collate_skip_none, drop_last=True)
    stream.set_epoch(1)
    full = [b["index"].tolist() for b in loader]
    assert sorted(i for b in full for i in b) == list(range(40))
    stream.set_epoch(1)
    stream.resume_at(done, 4)
    assert [b["index"].tolist() for b in loader] == full[done:]
    stream.set_epoch(2)                                   # the next epoch starts at its beginning again
    assert len(list(loader)) == len(full)
