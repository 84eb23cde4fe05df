"""``mmfm serve``: one small local web page over a CLIP model, an optional index and an optional Frozen model.

    GET  /                      the page (serve.html: inline CSS and JS, no build step)
    GET  /api/info              what is loaded
    POST /api/classify          multipart: image, labels ("a, b, c") -> probabilities, best first
    GET  /api/search?q=&k=      the index's top-k images for a text query (needs an index)
    GET  /api/thumbnail/{row}   a PNG thumbnail of row ``row`` of the index: only files IN the index are served
    POST /api/caption           multipart: image -> the Frozen model's caption (needs a Frozen model)

The numbers are those of the commands: classification through :mod:`mmfm.deploy.classify` (``mmfm classify``),
search as ``mmfm search`` (the query embedded by :func:`embed_texts`, ranked by :func:`search_index`: through the
index's approximate graph when it has one, as ``mmfm search`` without ``--exact``), captions by
:func:`mmfm.frozen.generate.caption`. Models are loaded once; one lock runs one inference at a time (the
endpoints run in a thread pool, and a model's modes and caches are not for two threads at once). Bad input is a
4xx answer ``{"error": "one line naming the problem and the fix"}``, checked before anything is decoded.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (UploadFile, imported
# inside build_app) at run time.
import html
import io
import threading
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import PIL.Image
import torch

from ..errors import UserError
from .classify import label_probabilities, label_weights, parse_labels
from .embed import embed_texts
from .ann import load_ann
from .index import Index, model_precision
from .search import search_index

MAX_UPLOAD_BYTES = 10 * 2**20      # an upload larger than this is refused before it is decoded
MAX_PIXELS = 40_000_000            # ... and an image header promising more pixels (a decompression bomb)
MAX_LABELS, MAX_K, THUMBNAIL = 100, 100, 256


class Refused(Exception):
    """A request the server will not run: ``status`` and a one-line message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_image(data: bytes, max_bytes: int = MAX_UPLOAD_BYTES) -> PIL.Image.Image:
    """An uploaded file as an RGB image, refused (one line) if empty, too large, or not an image PIL reads."""
    from ..data.base import to_rgb
    if not data:
        raise Refused(400, "no image uploaded: choose an image file (PNG, JPEG, ...)")
    if len(data) > max_bytes:
        raise Refused(413, f"the upload is over {max_bytes / 2**20:g} MB: upload a smaller image")
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:   # reads the header only
            if img.width * img.height > MAX_PIXELS:
                raise Refused(400, f"the image is {img.width}x{img.height} pixels, over {MAX_PIXELS:,}: "
                                   f"upload a smaller image")
            return to_rgb(img)                           # decodes now: a truncated file fails here
    except Refused:
        raise
    except PIL.UnidentifiedImageError:
        raise Refused(400, "the upload is not an image PIL can read: upload a PNG, JPEG, WebP, BMP, GIF or TIFF "
                           "file") from None
    except Exception as e:   # PIL raises many types for a damaged file
        why = " ".join(str(e).split()) or type(e).__name__
        raise Refused(400, f"the image could not be decoded ({why}): upload an undamaged image file") from None


def thumbnail_png(path: str, size: int = THUMBNAIL) -> bytes:
    import PIL.ImageOps

    from ..data.base import load_image
    img = PIL.ImageOps.contain(load_image(path), (size, size))   # enlarges small images too
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def check_index(model: torch.nn.Module, index: Index) -> None:
    """The index's rows must come from this model's weights, or a text query is compared in another space."""
    from .index import check_query_model
    check_query_model(index, model, f"index {index.root} was built by {index.meta['model']} from "
                      f"{index.meta['pretrained']}, not by the model being served (its weights differ): serve that "
                      f"model, or rebuild the index with `mmfm embed` and this model")


def page(name: str, index: Index | None, frozen: Any, approximate: bool = False) -> str:
    """serve.html with what is loaded filled in; a section without its model is hidden and says why.
    ``approximate``: the index is searched through its HNSW graph (said beside it)."""
    text = (Path(__file__).with_name("serve.html")).read_text(encoding="utf-8")
    shown = {True: "", False: "hidden"}
    fill = {
        "__MODEL__": html.escape(name),
        "__INDEX__": html.escape(f"{len(index.paths)} images ({index.root})"
                                 + (", approximate search (HNSW)" if approximate else "")) if index is not None else "none",
        "__FROZEN__": "loaded" if frozen is not None else "none",
        "__AND_CAPTION__": " and caption" if frozen is not None else "",
        "__CAPTION_ON__": shown[frozen is not None], "__CAPTION_OFF__": shown[frozen is None],
        "__SEARCH_ON__": shown[index is not None], "__SEARCH_OFF__": shown[index is None],
    }
    for key, value in fill.items():
        text = text.replace(key, value)
    return text


def build_app(model: torch.nn.Module, *, index: Index | None = None, frozen: tuple[Any, Any] | None = None,
              name: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
              caption_options: dict[str, Any] | None = None):
    """The FastAPI app over a CLIP ``model`` (eval mode), an optional ``index`` built by that model and an
    optional Frozen ``(model, tokenizer)`` from :func:`mmfm.frozen.load_frozen`. ``caption_options``: keyword
    arguments of :func:`mmfm.frozen.generate.caption` (strategy, max_new_tokens, ...)."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if index is not None:
        check_index(model, index)
    graph = load_ann(index) if index is not None else None   # checked against the index's rows, as by mmfm search
    name = name or type(model).__name__
    precision = model_precision(model)     # what the classify and search numbers were computed at
    lock = threading.Lock()
    app = FastAPI(title="mmfm serve", docs_url=None, redoc_url=None, openapi_url=None)
    html_page = page(name, index, frozen, approximate=graph is not None)

    @app.exception_handler(Refused)
    async def refused(request: Request, e: Refused):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(StarletteHTTPException)   # FastAPI's own 404/405, in the page's {"error"} shape
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": f"{request.method} {request.url.path}: {e.detail}"}, status_code=e.status_code)

    @app.exception_handler(UserError)      # e.g. a caption prompt longer than the LM's positions
    async def user_error(request: Request, e: UserError):
        return JSONResponse({"error": " ".join(str(e).split())}, status_code=400)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Refuse an oversized upload from its header, before the multipart parser spools it to disk.
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_upload_bytes + 2**16:    # + room for the form's other fields
            return JSONResponse({"error": f"the upload is over {max_upload_bytes / 2**20:g} MB: upload a smaller "
                                          f"image"}, status_code=413)
        return await call_next(request)

    def upload(image: UploadFile | None) -> PIL.Image.Image:
        data = image.file.read(max_upload_bytes + 1) if image is not None else b""
        return read_image(data, max_upload_bytes)

    @app.get("/", response_class=HTMLResponse)
    def index_page():
        return html_page

    @app.get("/api/info")
    def info():
        return {"model": name, "precision": precision,
                "index": None if index is None else {"root": str(index.root), "images": len(index.paths),
                                                     "search": "exact" if graph is None else "hnsw"},
                "frozen": frozen is not None}

    # Plain `def` endpoints run in FastAPI's thread pool; the lock makes them take turns on the models.
    @app.post("/api/classify")
    def classify(image: Annotated[UploadFile | None, File()] = None, labels: Annotated[str, Form()] = ""):
        try:
            names = parse_labels(labels)
        except UserError as e:
            raise Refused(400, str(e)) from None
        if len(names) > MAX_LABELS:
            raise Refused(400, f"{len(names)} labels: give at most {MAX_LABELS}")
        img = upload(image)
        with lock, torch.inference_mode():
            weights = label_weights(model, names)
            probs = label_probabilities(model, [img], weights)[0]
        order = probs.argsort(descending=True).tolist()
        return {"labels": [{"label": names[i], "probability": float(probs[i])} for i in order]}

    @app.get("/api/search")
    def text_search(q: str = "", k: str = "5"):
        if index is None:
            raise Refused(404, "no index is loaded: start mmfm serve with --index INDEX (built by `mmfm embed` "
                               "with this model)")
        if not q.strip():
            raise Refused(400, "empty query: type what to search for, e.g. q=a red circle")
        if not k.isdigit() or not 1 <= int(k) <= MAX_K:
            raise Refused(400, f"k={k!r}: give a whole number of results from 1 to {MAX_K}")
        with lock, torch.inference_mode():
            query = embed_texts(model, [q.strip()])[0]
        hits, how = search_index(index, np.asarray(query), int(k), graph)
        return {"query": q.strip(), "search": how, "hits": [{"rank": n + 1, "row": i, "path": index.paths[i], "score": score,
                                              "thumbnail": f"/api/thumbnail/{i}"}
                                             for n, (i, score) in enumerate(hits)]}

    @app.get("/api/thumbnail/{row}")
    def thumbnail(row: str):
        # By row number, never by path: the server shows the index's own files and nothing else.
        if index is None or not row.isdigit() or not int(row) < len(index.paths):
            raise Refused(404, f"no image {row!r} in the index: use the thumbnail links of /api/search")
        row = int(row)
        try:
            data = thumbnail_png(index.paths[row])
        except OSError:
            raise Refused(404, f"{index.paths[row]} can no longer be read (moved or deleted since it was "
                               f"embedded): rebuild the index with `mmfm embed`") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/caption")
    def caption(image: Annotated[UploadFile | None, File()] = None):
        if frozen is None:
            raise Refused(404, "no Frozen model is loaded: start mmfm serve with --frozen DIR")
        from ..frozen.generate import caption as frozen_caption
        img = upload(image)
        with lock, torch.inference_mode():
            text = frozen_caption(frozen[0], frozen[1], [img], **(caption_options or {}))[0]
        return {"caption": text}

    return app


def run(app, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with uvicorn until Ctrl-C."""
    import uvicorn
    uvicorn.run(app, host=host, port=port, log_level="info")
