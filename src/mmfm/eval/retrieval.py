"""Image<->text retrieval: Recall@K, median and mean rank, several captions per image.

Definitions (the usual ones, e.g. Flickr30k/COCO in the CLIP paper):

* image->text: the query is an image, the candidates are all captions; the rank of an image is the
  rank of its *best-ranked* own caption, so a hit at K means "any of its captions is in the top K".
* text->image: the query is a caption, the candidates are all images; exactly one image is correct.

Ranks are 1-based. **Tie rule**: a candidate is ranked above the correct one only if its score is
*strictly* higher, i.e. ``rank = 1 + #{wrong candidates with a strictly higher score}``
(``ties="optimistic"``, the default and the usual choice). ``ties="pessimistic"`` counts wrong
candidates with an equal score as ranked above too. The two differ only when scores tie exactly,
which real embeddings essentially never do, but collapsed ones (every input mapped to the same
vector) do: they score a perfect recall under the optimistic rule. To make that visible, results
report how many queries had such a tie (``tied_queries``). Other correct captions of the same image
never count against an image->text query.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ..util.weights import model_fingerprint
from .cache import FeatureCache, cache_key, get_cache
from .features import PerfMeter, encode_texts, extract_image_features, get_text_tokenizer, model_device
from .results import RetrievalResult, skipped_names

TieRule = Literal["optimistic", "pessimistic"]


def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: Sequence[int] | torch.Tensor, *,
                    ties: TieRule = "optimistic", chunk_size: int = 1024,
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Ranks from (already normalised, or otherwise comparable) embeddings.

    text_image: ``text_image[t]`` = index of the image caption ``t`` describes.
    Returns ``(image_ranks [N_images], text_ranks [N_texts], tied_queries)``; an image without any
    caption gets rank NaN (and is left out of the image->text metrics).
    Scores are dot products, computed ``chunk_size`` queries at a time (memory O(chunk x candidates)).
    """
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")
    img = torch.as_tensor(image_emb).float()
    txt = torch.as_tensor(text_emb).float()
    owner = torch.as_tensor(text_image, dtype=torch.long)
    n_img, n_txt = img.shape[0], txt.shape[0]
    if owner.shape[0] != n_txt:
        raise ValueError(f"{n_txt} text embeddings but {owner.shape[0]} text->image indices")
    if n_txt and (owner.min() < 0 or owner.max() >= n_img):
        raise ValueError("text_image indices must lie in [0, number of images)")
    above = torch.gt if ties == "optimistic" else torch.ge

    image_ranks = np.full(n_img, np.nan)
    tied_i2t = 0
    for s in range(0, n_img, chunk_size):
        scores = img[s:s + chunk_size] @ txt.T                                    # [b, T]
        rows = torch.arange(s, min(s + chunk_size, n_img))
        positive = owner[None, :] == rows[:, None]                                # [b, T]
        best = torch.where(positive, scores, torch.full_like(scores, -torch.inf)).max(dim=1).values
        has_caption = positive.any(dim=1)
        wrong = ~positive
        n_above = (above(scores, best[:, None]) & wrong).sum(dim=1)
        tied_i2t += int(((scores == best[:, None]) & wrong).any(dim=1)[has_caption].sum())
        r = (1 + n_above).double()
        r[~has_caption] = float("nan")
        image_ranks[s:s + len(rows)] = r.numpy()

    text_ranks = np.zeros(n_txt, dtype=np.int64)
    tied_t2i = 0
    for s in range(0, n_txt, chunk_size):
        scores = txt[s:s + chunk_size] @ img.T                                    # [b, N]
        target = owner[s:s + chunk_size]
        correct = scores.gather(1, target[:, None])
        wrong = torch.ones_like(scores, dtype=torch.bool)
        wrong.scatter_(1, target[:, None], False)
        text_ranks[s:s + len(target)] = (1 + (above(scores, correct) & wrong).sum(dim=1)).numpy()
        tied_t2i += int(((scores == correct) & wrong).any(dim=1).sum())
    return image_ranks, text_ranks, {"image_to_text": tied_i2t, "text_to_image": tied_t2i}


def retrieval_metrics(image_ranks: np.ndarray, text_ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (fraction of queries whose correct item ranks <= K), median and mean rank, per direction,
    and ``mean_recall`` (the average of all R@K values)."""
    out: dict[str, float] = {}
    recalls = []
    for prefix, ranks in (("i2t", np.asarray(image_ranks, dtype=np.float64)), ("t2i", np.asarray(text_ranks, dtype=np.float64))):
        ranks = ranks[~np.isnan(ranks)]
        for k in ks:
            r = float((ranks <= k).mean()) if ranks.size else float("nan")
            out[f"{prefix}_R@{k}"] = r
            recalls.append(r)
        out[f"{prefix}_median_rank"] = float(np.median(ranks)) if ranks.size else float("nan")
        out[f"{prefix}_mean_rank"] = float(ranks.mean()) if ranks.size else float("nan")
    out["mean_recall"] = float(np.mean(recalls))
    return out


def text_embeddings(model: nn.Module, texts: Sequence[str], *, tokenizer: Callable | None = None,
                    batch_size: int = 256, device: str | torch.device | None = None,
                    cache: FeatureCache | str | Path | None = None, progress: bool = False,
                    meter: PerfMeter | None = None) -> torch.Tensor:
    """Normalised text embeddings, cached per (model weights, texts, tokenizer)."""
    tok = get_text_tokenizer(model, tokenizer)
    key = cache_key("texts", model_fingerprint(model), list(texts), getattr(tok, "context_length", None),
                    type(tok).__name__)
    store = get_cache(cache)
    hit = store.get(key)
    if hit is not None:
        return hit.tensors["embeddings"]
    emb = encode_texts(model, texts, tokenizer=tok, batch_size=batch_size, device=device, normalize=True,
                       progress=progress, meter=meter)
    store.put(key, {"embeddings": emb})
    return emb


def retrieval(model: nn.Module, dataset, *, ks: Sequence[int] = (1, 5, 10), ties: TieRule = "optimistic",
              model_name: str | None = None, batch_size: int = 64, text_batch_size: int = 256,
              num_workers: int = 0, device: str | torch.device | None = None, transform: Callable | None = None,
              tokenizer: Callable | None = None, cache: FeatureCache | str | Path | None = None,
              keep_ranks: bool = True, progress: bool = True, out_dir: str | Path | None = None,
              num_examples: int = 8) -> RetrievalResult:
    """Image->text and text->image retrieval on every image and every caption of ``dataset``.

    Captions come from ``dataset.get_captions`` (via :func:`mmfm.data.pipeline.all_captions`), so a
    Flickr30k test split gives 1,000 images x 5 captions. ``keep_ranks`` stores every rank in the
    result (for per-query analysis); turn it off for very large sets. With ``out_dir``, a PNG shows
    ``num_examples`` images with their top-3 retrieved captions and cosine similarities.
    """
    from ..data.pipeline import all_captions
    from .results import file_slug
    from .zero_shot import model_label
    device = torch.device(device) if device is not None else model_device(model)
    captions, owner = all_captions(dataset)
    feats = extract_image_features(model, dataset, kind="embedding", batch_size=batch_size,
                                   num_workers=num_workers, device=device, transform=transform, cache=cache,
                                   progress=progress, desc=f"retrieval {getattr(dataset, 'name', '')} images")
    if feats.skipped:   # unreadable images leave the candidate set, and their captions with them
        keep = torch.ones(len(feats.features), dtype=torch.bool)
        keep[list(feats.skipped)] = False
        new_index = torch.cumsum(keep.long(), 0) - 1
        image_ids = torch.nonzero(keep).flatten().tolist()
        pairs = [(c, int(new_index[o])) for c, o in zip(captions, owner) if keep[o]]
        captions, owner = [c for c, _ in pairs], [o for _, o in pairs]
        image_feats = feats.features[keep]
    else:
        image_ids, image_feats = list(range(len(feats.features))), feats.features
    img = image_feats / image_feats.norm(dim=1, keepdim=True)
    text_meter = PerfMeter(device)
    with text_meter:
        txt = text_embeddings(model, captions, tokenizer=tokenizer, batch_size=text_batch_size, device=device,
                              cache=cache, progress=progress, meter=text_meter)
    image_ranks, text_ranks, tied = retrieval_ranks(img, txt, owner, ties=ties)
    metrics = retrieval_metrics(image_ranks, text_ranks, ks)
    # Mean cosine similarity of matched (image, own caption) pairs: how well pairs align in absolute
    # terms, which recall (a relative measure) does not show.
    owner_t = torch.as_tensor(owner, dtype=torch.long)
    metrics["mean_matched_cosine"] = float((img[owner_t] * txt).sum(dim=1).mean())
    if out_dir is not None and num_examples > 0:
        from .plots import plot_retrieval_examples
        n = min(num_examples, int(img.shape[0]))
        sims = img[:n] @ txt.T
        top = sims.topk(min(3, sims.shape[1]), dim=1)
        examples = []
        for i in range(n):
            # Right when the retrieved text is one of this image's captions, even if another image owns that
            # copy of the text (two images can share a caption word for word).
            truth = {c for c, o in zip(captions, owner) if o == i}
            examples.append((dataset.get_sample(image_ids[i]).image,
                             [(captions[j], float(v), captions[j] in truth)
                              for v, j in zip(top.values[i].tolist(), top.indices[i].tolist())]))
        plot_retrieval_examples(examples, Path(out_dir) / f"retrieval_{file_slug(getattr(dataset, 'name', 'data'))}.png",
                                title=f"{model_label(model, model_name)}: top captions per image")
    return RetrievalResult(
        model=model_label(model, model_name), dataset=getattr(dataset, "name", type(dataset).__name__),
        perf=feats.perf, metrics=metrics, image_ranks=image_ranks if keep_ranks else None,
        text_ranks=text_ranks if keep_ranks else None, num_images=int(img.shape[0]), num_texts=len(captions),
        ties=ties, tied_queries=tied,
        config={"ks": list(ks), "text_perf": text_meter.stats().to_dict() if text_meter.num_items else None,
                "skipped_images": skipped_names(feats)})
