"""Retrieval ranks and recalls on constructed embeddings, the tie rule, and an end-to-end run."""
import numpy as np
import pytest
import torch

from mmfm.eval import retrieval, retrieval_metrics, retrieval_ranks


def onehot(n, dim=None):
    return torch.eye(dim or n)[:n]


def test_perfect_ranking():
    img = onehot(4)
    txt = onehot(4)
    image_ranks, text_ranks, tied = retrieval_ranks(img, txt, [0, 1, 2, 3])
    np.testing.assert_array_equal(image_ranks, [1, 1, 1, 1])
    np.testing.assert_array_equal(text_ranks, [1, 1, 1, 1])
    m = retrieval_metrics(image_ranks, text_ranks)
    assert m["i2t_R@1"] == m["t2i_R@1"] == m["mean_recall"] == 1.0
    assert m["i2t_median_rank"] == m["t2i_mean_rank"] == 1.0
    assert tied == {"image_to_text": 0, "text_to_image": 0}


def test_reversed_ranking():
    # Scores s[i, t] = -|i - t| ... arranged so that each query's correct item is scored lowest:
    # image i's caption is text i, and image i prefers every other text (higher dot product).
    n = 5
    img = torch.eye(n)
    txt = 1.0 - torch.eye(n)           # text t is similar to every image except its own
    image_ranks, text_ranks, _ = retrieval_ranks(img, txt, list(range(n)))
    np.testing.assert_array_equal(image_ranks, [n] * n)
    np.testing.assert_array_equal(text_ranks, [n] * n)
    m = retrieval_metrics(image_ranks, text_ranks, ks=(1, 4, 5))
    assert m["i2t_R@1"] == 0.0 and m["i2t_R@4"] == 0.0 and m["i2t_R@5"] == 1.0
    assert m["t2i_median_rank"] == n and m["t2i_mean_rank"] == n


def test_known_permutation_with_graded_scores():
    # 4 images; text t describes image perm[t]. Scores make the correct image rank exactly r[t].
    perm = [2, 0, 3, 1]
    wanted_rank = [1, 2, 3, 4]
    n = 4
    scores = torch.zeros(n, n)   # [text, image]
    for t in range(n):
        others = [i for i in range(n) if i != perm[t]]
        order = others[: wanted_rank[t] - 1] + [perm[t]] + others[wanted_rank[t] - 1:]
        for pos, i in enumerate(order):
            scores[t, i] = float(n - pos)        # strictly decreasing along `order`
    # Embeddings reproducing these scores: image = one-hot, text = its score row.
    img, txt = torch.eye(n), scores
    _, text_ranks, _ = retrieval_ranks(img, txt, perm)
    np.testing.assert_array_equal(text_ranks, wanted_rank)
    m = retrieval_metrics(np.ones(n), text_ranks, ks=(1, 2, 3))
    assert m["t2i_R@1"] == 0.25 and m["t2i_R@2"] == 0.5 and m["t2i_R@3"] == 0.75
    assert m["t2i_median_rank"] == 2.5 and m["t2i_mean_rank"] == 2.5


def test_image_to_text_uses_best_of_several_captions():
    # Image 0 has captions 0 and 1; image 1 has caption 2. Scores for image 0: t2 > t1 > t0.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.1, 0.0], [0.5, 0.0], [0.9, 0.9]])
    image_ranks, text_ranks, _ = retrieval_ranks(img, txt, [0, 0, 1])
    # Image 0: its best caption (t1, 0.5) is beaten only by t2 (0.9) -> rank 2; its other caption
    # t0 never counts against it.
    assert image_ranks[0] == 2
    assert image_ranks[1] == 1
    # Text 0: image 0 scores 0.1, image 1 scores 0 -> rank 1. Text 2: both images 0.9 -> tie.
    np.testing.assert_array_equal(text_ranks, [1, 1, 1])


def test_tie_rule():
    # Collapsed embeddings: every score ties.
    img = torch.ones(3, 2)
    txt = torch.ones(6, 2)
    owner = [0, 0, 1, 1, 2, 2]
    i_opt, t_opt, tied = retrieval_ranks(img, txt, owner, ties="optimistic")
    np.testing.assert_array_equal(i_opt, [1, 1, 1])          # strictly-better rule: nothing beats a tie
    np.testing.assert_array_equal(t_opt, [1] * 6)
    assert tied == {"image_to_text": 3, "text_to_image": 6}  # ...but the ties are reported
    i_pes, t_pes, _ = retrieval_ranks(img, txt, owner, ties="pessimistic")
    np.testing.assert_array_equal(i_pes, [5, 5, 5])          # 1 + the 4 wrong captions tied with it
    np.testing.assert_array_equal(t_pes, [3] * 6)            # 1 + the 2 wrong images
    with pytest.raises(ValueError):
        retrieval_ranks(img, txt, owner, ties="random")


def test_chunking_does_not_change_ranks():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(23, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    owner = torch.randint(0, 23, (60,), generator=g)
    a = retrieval_ranks(img, txt, owner, chunk_size=1024)
    b = retrieval_ranks(img, txt, owner, chunk_size=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_image_without_captions_is_left_out():
    img = torch.eye(3)
    txt = torch.eye(3)[:2]
    image_ranks, _, _ = retrieval_ranks(img, txt, [0, 1])
    assert np.isnan(image_ranks[2])
    m = retrieval_metrics(image_ranks, np.array([1, 1]))
    assert m["i2t_R@1"] == 1.0 and m["i2t_mean_rank"] == 1.0


def test_bad_indices():
    with pytest.raises(ValueError):
        retrieval_ranks(torch.eye(2), torch.eye(2), [0, 2])
    with pytest.raises(ValueError):
        retrieval_ranks(torch.eye(2), torch.eye(2), [0])


def test_end_to_end_on_captioned_data(tiny_clip, shapes_small):
    r = retrieval(tiny_clip, shapes_small, progress=False, model_name="tiny")
    assert r.num_images == len(shapes_small)
    assert r.num_texts == sum(len(shapes_small.get_captions(i)) for i in range(len(shapes_small)))
    for k in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
        assert 0.0 <= r.metrics[k] <= 1.0
    assert r.metrics["t2i_R@10"] >= r.metrics["t2i_R@5"] >= r.metrics["t2i_R@1"]
    assert r.perf.items_per_s > 0 and r.perf.peak_rss_mb > 0 and r.perf.batch_latency_ms["mean"] > 0
    # The same ranks from the embeddings computed by hand.
    from mmfm.data import all_captions
    from mmfm.data.transforms import image_transform
    from mmfm.tokenizer import tokenize
    caps, owner = all_captions(shapes_small)
    tf = image_transform(32)
    with torch.no_grad():
        im = tiny_clip.encode_image(torch.stack([tf(shapes_small[i].image) for i in range(len(shapes_small))]),
                                    normalize=True)
        tx = tiny_clip.encode_text(tokenize(caps, context_length=tiny_clip.context_length), normalize=True)
    ir, tr, _ = retrieval_ranks(im, tx, owner)
    np.testing.assert_array_equal(tr, r.text_ranks)
    np.testing.assert_array_equal(ir, r.image_ranks)
    d = r.to_dict()
    assert d["ties"] == "optimistic" and len(d["text_ranks"]) == r.num_texts


def test_retrieval_reports_mean_matched_cosine_and_example_png(tmp_path):
    import torch

    from mmfm.data import get_dataset
    from mmfm.data.pipeline import all_captions
    from mmfm.eval import retrieval
    from mmfm.api import create_model
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").eval()
    ds = get_dataset("shapes", split="test", size=12, image_size=32)
    r = retrieval(model, ds, out_dir=tmp_path, num_examples=4, progress=False, device="cpu")
    assert (tmp_path / "retrieval_shapes.png").is_file()
    captions, owner = all_captions(ds)
    from mmfm.data.transforms import image_transform
    from mmfm.tokenizer import tokenize
    tf = image_transform(32)
    with torch.no_grad():
        img = model.encode_image(torch.stack([tf(ds[i].image) for i in range(len(ds))]), normalize=True)
        txt = model.encode_text(tokenize(captions, context_length=16), normalize=True)
    expected = (img[torch.tensor(owner)] * txt).sum(1).mean().item()
    assert abs(r.metrics["mean_matched_cosine"] - expected) < 1e-4


def test_example_png_marks_a_caption_with_the_right_text_as_right_and_has_a_legend(tmp_path, monkeypatch):
    """Two images share a caption word for word: retrieving the other image's copy is still right."""
    import PIL.Image

    from mmfm.data.base import MultimodalDataset, Sample
    from mmfm.eval import plots

    class Twins(MultimodalDataset):
        name = "twins"

        def __len__(self):
            return 2

        def get_sample(self, i):
            return Sample(image=PIL.Image.new("RGB", (8, 8), (40 * i, 0, 0)), captions=self.get_captions(i))

        def get_captions(self, i):
            return ["a red square"]

    seen, figures = [], []
    real_plot, real_save = plots.plot_retrieval_examples, plots._save
    monkeypatch.setattr(plots, "plot_retrieval_examples", lambda ex, *a, **k: seen.append(ex) or real_plot(ex, *a, **k))
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or real_save(fig, path))
    from mmfm.api import create_model
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").eval()
    retrieval(model, Twins(), progress=False, out_dir=tmp_path)
    assert (tmp_path / "retrieval_twins.png").is_file()
    for image, tops in seen[0]:
        assert all(right for _, _, right in tops)      # both texts are every image's own caption
    legend = figures[0].legends[0]
    assert {t.get_text() for t in legend.get_texts()} == {"✓ one of the image's own captions",
                                                          "✗ another image's caption"}
