"""Deploying a CLIP model on a folder of images: embed it into an index, then search the index (issue 18).

The index is a folder (documented in :mod:`mmfm.deploy.index`), written through :mod:`mmfm.util.atomic`.
"""
from __future__ import annotations

from .embed import Embedded, embed_images, embed_texts, find_images
from .index import INDEX_VERSION, Index, check_query_model, check_query_precision, load_index, model_precision, write_index
from .ann import load_ann
from .search import contact_sheet, search, search_index

__all__ = ["Embedded", "embed_images", "embed_texts", "find_images", "INDEX_VERSION", "Index", "check_query_precision",
           "check_query_model", "load_index", "model_precision", "write_index", "contact_sheet", "search",
           "search_index", "load_ann"]
