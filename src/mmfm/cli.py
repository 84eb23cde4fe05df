"""The ``mmfm`` command. Thin: parses arguments and calls the public API.

Every failure ends in one line on stderr: a user error (bad flag, file, config value) names the
problem and the fix and exits with 2; an unexpected exception also names its type and points to
``--debug`` (or ``MMFM_DEBUG=1``), which shows the traceback; Ctrl-C exits with 130.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import UserError
from .util.argtypes import non_negative_int, positive_int


def _cmd_models(args) -> int:
    from .models import list_models
    from .models.registry import describe
    from .report import markdown_table
    names = list_models()
    print(markdown_table(["model", "description"], [[n, describe(n)] for n in names]))
    return 0


def _cmd_info(args) -> int:
    from .info import model_info, render_info
    info = model_info(args.model, pretrained=args.pretrained, lora=args.lora)
    print(json.dumps(info, indent=2, default=str) if args.json else render_info(info))
    return 0


def _cmd_run(args) -> int:
    from .experiment import run_experiment
    existing = "resume" if args.resume else "overwrite" if args.overwrite else "refuse"
    run_experiment(args.config, out_dir=args.out, overrides=args.set or [], existing=existing)
    return 0


def _cmd_eval(args) -> int:
    from .evaluate import run_eval
    result = run_eval(args.kind, model_name=args.model, pretrained=args.pretrained, dataset=args.dataset,
                      data_root=args.data_root, out_dir=args.out, batch_size=args.batch_size, device=args.device,
                      task=args.task, dataset_kwargs=_dataset_kwargs(args), adapter=args.adapter,
                      protocol=args.protocol,
                      **_fewshot_kwargs(args))
    print(result.to_markdown() if hasattr(result, "to_markdown") else json.dumps(result.to_dict(), indent=2, default=str))
    return 0


def _cmd_published(args) -> int:
    from .eval.published import published_table
    print(published_table(args.model, args.pretrained))
    return 0


def _cmd_pretrained(args) -> int:
    from .eval.published import loadable_pretrained
    from .report import markdown_table
    rows = [[m, t, "yes" if p else "–"] for m, t, p in loadable_pretrained()]
    print(markdown_table(["model", "pretrained", "published results"], rows))
    print("\nLoad with: create_model(MODEL, pretrained=TAG), or --model MODEL --pretrained TAG; "
          "`mmfm published MODEL TAG` prints open_clip's numbers for it.")
    return 0


def _fewshot_kwargs(args) -> dict:
    """``--method/--shots/--seeds`` for ``mmfm eval fewshot`` (refused by name for the other kinds)."""
    kw = {k: v for k, v in (("method", args.method), ("shots", args.shots), ("seeds", args.seeds)) if v is not None}
    if kw and args.kind != "fewshot":
        raise ValueError(f"--{'/--'.join(kw)} only apply to `mmfm eval fewshot`, not {args.kind}")
    return kw


def _dataset_kwargs(args) -> dict | None:
    """What the data options of ``mmfm eval`` add to the dataset's constructor."""
    kw = {}
    if args.download:
        kw["download"] = True
    if args.annotations is not None:
        kw["annotations"] = _user_path(args.annotations, args.data_root)
    return kw or None


def _user_path(path: str, root: str | None) -> str:
    """A file named on the command line: relative to the working directory, as a shell user expects;
    a path that does not exist there but does under ``root`` (the data folder) is taken from there."""
    if root is not None and not Path(path).exists() and (Path(root) / path).exists():
        return str(Path(root) / path)
    return str(Path(path).absolute()) if "{" not in path else path   # "{split}.csv" is resolved per split


EVAL_CHOICES = ["zeroshot", "linear-probe", "fewshot", "retrieval"]   # = mmfm.evaluate.cli_choices()
EVAL_EPILOG = """datasets: {datasets}

examples:
  mmfm eval zeroshot --model RN-S-64 --pretrained runs/quickstart/clip-rn-s/model --dataset shapes --task color
  mmfm eval linear-probe --model ViT-B-32 --pretrained openai --dataset flowers102 --data-root ~/data --out out/
"""


def _cmd_shards(args) -> int:
    from .data.shards import shards_from_folder
    label_column = None if args.label_column.lower() == "none" else args.label_column
    written = shards_from_folder(args.images, _user_path(args.captions, args.images), args.out,
                                 label_column=label_column, maxcount=args.maxcount)
    skipped = f"; skipped {written.skipped} unreadable image(s)" if written.skipped else ""
    print(f"wrote {written.count} sample(s) in {len(written.paths)} shard(s) to {args.out}{skipped}")
    return 0


def _cmd_export(args) -> int:
    from .api import from_pretrained
    from .export import export_onnx
    if not Path(args.model_dir).exists():
        raise UserError(f"{args.model_dir} does not exist: name a model folder (written by training or "
                        f"mmfm.save_pretrained)")
    paths = export_onnx(from_pretrained(args.model_dir, device="cpu", precision="fp32"), args.out)
    for tower, path in paths.items():
        print(f"{tower} encoder: {path}")
    return 0


# = mmfm.deploy.index.PRECISIONS (a test checks): not imported from there, since mmfm.deploy loads torch and the
# CLI parses its arguments before any of that.
PRECISION_CHOICES = ["fp32", "bf16", "fp16", "int8"]


def _check_precision(device: str | None, precision: str | None, index: str | None = None) -> None:
    """Before any work: fp16 only on CUDA (CPUs have no fast fp16 matmuls), int8 only on the CPU (dynamic
    quantization has no GPU kernels); bf16 and fp32 anywhere. ``index``: the precision is that index's (no
    --precision given), and the message names it rather than a flag the user never passed."""
    import torch
    kind = torch.device(device).type if device is not None else "cpu"
    if index is not None and precision == "fp16" and kind != "cuda":
        raise UserError(f"index {index} holds fp16 embeddings, which need a CUDA GPU to query (--device cuda): on "
                        f"a {kind}, rebuild it with `mmfm embed --precision bf16` (or fp32)")
    if index is not None and precision == "int8" and kind != "cpu":
        raise UserError(f"index {index} holds int8 embeddings, which are CPU inference only: query it with "
                        f"--device cpu")
    if precision == "fp16" and kind != "cuda":
        raise UserError(f"--precision fp16 needs a CUDA GPU (--device cuda): on a {kind} use bf16 or int8")
    if precision == "int8" and kind != "cpu":
        raise UserError(f"--precision int8 is CPU inference only (dynamic quantization has no {kind} kernels): "
                        f"use --device cpu, or bf16/fp16 on a GPU")


def _inference_model(command: str, name: str, pretrained: str | None, device: str | None, precision: str):
    """``create_model`` at ``--precision`` for inference (eval mode), with one note where this CPU would emulate
    bf16 (correct, slower than fp32)."""
    import warnings

    import torch

    from .api import create_model
    from .models.precision import cpu_has_native_bf16
    _check_precision(device, precision)
    kind = torch.device(device).type if device is not None else "cpu"
    emulated = precision == "bf16" and kind == "cpu" and cpu_has_native_bf16() is False
    if emulated:
        print(f"mmfm {command}: note: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag): --precision bf16 "
              f"is correct but slower than fp32 here; int8 or fp32 is faster", file=sys.stderr)
    with warnings.catch_warnings():
        if emulated:   # said above, in the command's words: not again as a Python warning
            warnings.filterwarnings("ignore", message=".*without native bf16.*", category=RuntimeWarning)
        return create_model(name, pretrained=pretrained, device=device, precision=precision).eval()


def _cmd_classify(args) -> int:
    from .data.base import load_image
    from .deploy.classify import label_probabilities, label_weights
    _check_precision(args.device, args.precision)
    classnames, templates = _classify_labels(args)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise UserError(f"no image file {missing[0]}: name existing image files")
    if args.pretrained is None:
        print(f"mmfm classify: warning: no --pretrained, {args.model} has random weights: its labels mean nothing",
              file=sys.stderr)
    model = _inference_model("classify", args.model, args.pretrained, args.device, args.precision)
    # The dataset's prompt ensemble (or each label as its own prompt), as zero-shot evaluation builds it;
    # the same functions as `mmfm serve`, so the page and this command agree.
    weights = label_weights(model, classnames, templates)
    rows = []
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start:start + args.batch_size]
        probs = label_probabilities(model, [load_image(p) for p in paths], weights)
        for path, p in zip(paths, probs):
            top = p.argsort(descending=True)[:args.top]
            rows.append({"path": str(path), "precision": args.precision,
                         "labels": [{"label": classnames[i], "probability": float(p[i])} for i in top.tolist()]})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        at = "" if args.precision == "fp32" else f"  ({args.precision})"   # a number names how it was made
        for row in rows:
            print(row["path"] + at)
            for item in row["labels"]:
                print(f"  {item['probability']:6.1%}  {item['label']}")
    return 0


def _cmd_embed(args) -> int:
    from .deploy import embed_images, embed_texts, find_images, write_index
    from .models.precision import int8_layers
    from .util.weights import model_fingerprint
    _check_precision(args.device, args.precision)
    if args.ann:   # before the images are embedded, not after
        from .deploy.ann import require_faiss
        require_faiss()
    # Absolute paths: the index is searched (and its contact sheet drawn) from any working directory.
    paths = [os.path.abspath(p) for p in find_images(args.inputs)]
    texts = _read_texts(args.texts) if args.texts else []
    if args.pretrained is None:
        print(f"mmfm embed: warning: no --pretrained, {args.model} has random weights: the index cannot be "
              f"searched later (a search rebuilds the model and its weights would differ)", file=sys.stderr)
    # A checkpoint path as an absolute path: `mmfm search` rebuilds the model from it, from any folder.
    pretrained = str(Path(args.pretrained).resolve()) if args.pretrained and Path(args.pretrained).exists() \
        else args.pretrained
    model = _inference_model("embed", args.model, pretrained, args.device, args.precision)
    done = embed_images(model, paths, batch_size=args.batch_size, workers=args.workers, progress=True)
    for path, why in done.skipped:
        print(f"mmfm embed: skipped {path}: {why}", file=sys.stderr)
    if not done.paths:
        raise UserError(f"none of the {len(paths)} images could be read (see above): name readable images")
    write_index(args.out, done.embeddings, done.paths, model=args.model, pretrained=pretrained,
                fingerprint=model_fingerprint(model), precision=args.precision, int8_layers=int8_layers(model),
                texts=texts,
                text_embeddings=embed_texts(model, texts) if texts else None, skipped=done.skipped, ann=args.ann)
    print(f"{len(done.paths)} images{f', {len(texts)} texts' if texts else ''} embedded "
          f"({done.embeddings.shape[1]}-d, {args.precision}) into {args.out}{' with an HNSW graph' if args.ann else ''}; "
          f"{len(done.skipped)} unreadable skipped")
    return 0


def _read_texts(path: str) -> list[str]:
    """One caption per line; blank lines ignored."""
    try:
        texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError(f"--texts {path} does not exist: name a UTF-8 text file with one caption per line") from None
    except UnicodeDecodeError:
        raise UserError(f"--texts {path} is not UTF-8 text: give one caption per line") from None
    if not texts:
        raise UserError(f"--texts {path} holds no text: give one caption per line")
    return texts


def _cmd_search(args) -> int:
    import torch

    from .data.base import load_image
    from .data.transforms import image_transform
    from .deploy import (check_query_model, check_query_precision, contact_sheet, embed_texts, load_ann, load_index,
                         search_index)
    if (args.query is None) == (args.image is None):
        raise UserError('give a text query or --image IMG (one of them): mmfm search INDEX "a red circle"')
    _check_precision(args.device, args.precision)
    index = load_index(args.index)
    if args.image is not None and not Path(args.image).is_file():
        raise UserError(f"--image {args.image} does not exist: name an image file")
    meta = index.meta
    if meta["pretrained"] is None:
        raise UserError(f"{args.index} was built from random weights (no --pretrained), which cannot be rebuilt to "
                        f"embed a query: rebuild it with `mmfm embed ... --pretrained CHECKPOINT`")
    # The query is embedded as the index's rows were: same weights, same precision (the default).
    precision = args.precision or meta["precision"]
    if args.precision is None:   # the index's own precision: checked here, in the index's words
        _check_precision(args.device, precision, index=args.index)
    check_query_precision(index, precision)
    graph = None if args.exact else load_ann(index)   # checked against the rows before any model is built
    if args.ef_search is not None and graph is None:
        raise UserError(f"--ef-search tunes an approximate graph, and {args.index} is searched exactly "
                        f"({'--exact' if args.exact else 'it has none: build one with `mmfm embed ... --ann`'})")
    model = _inference_model("search", meta["model"], meta["pretrained"], args.device, precision)
    check_query_model(index, model, f"{meta['model']} from {meta['pretrained']} is not the model that built "
                      f"{args.index} (its weights changed): rebuild the index with `mmfm embed`")
    if args.image is not None:
        pixels = image_transform(model.image_size)(load_image(args.image))[None]
        with torch.no_grad():
            query = model.encode_image(pixels.to(next(model.parameters()).device), normalize=True).float().cpu()
        query = query.numpy()[0]
    else:
        query = embed_texts(model, [args.query])[0]
    found, how = search_index(index, query, args.top_k, graph, args.ef_search)
    hits = [{"rank": n + 1, "path": index.paths[i], "score": score, "precision": precision, "search": how}
            for n, (i, score) in enumerate(found)]
    if args.json:
        print(json.dumps(hits, indent=2))
    else:
        notes = ([] if precision == "fp32" else [f"{precision} query and index"]) + \
            ([] if how == "exact" else [f"approximate: {how}; --exact ranks every row"])
        print(f"{'rank':>4}  {'cosine':>7}  path" + (f"  ({'; '.join(notes)})" if notes else ""))
        for hit in hits:
            print(f"{hit['rank']:>4}  {hit['score']:7.4f}  {hit['path']}")
    if args.sheet:
        print(f"contact sheet: {contact_sheet(hits, args.sheet)}", file=sys.stderr)
    return 0


def _cmd_serve(args) -> int:
    from .deploy import check_query_precision, load_index
    from importlib.util import find_spec
    missing = [name for name, module in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
                                         ("python-multipart", "python_multipart")) if find_spec(module) is None]
    if missing:
        raise UserError(f"mmfm serve needs {', '.join(missing)}: pip install 'mmfm[serve]'")
    from .deploy.serve import build_app, run
    _check_precision(args.device, args.precision)
    index = load_index(args.index) if args.index else None     # validated before any model is built
    precision = args.precision or (index.meta["precision"] if index is not None else "fp32")
    if index is not None and args.precision is None:
        _check_precision(args.device, precision, index=args.index)
    if index is not None:
        check_query_precision(index, precision)
    if args.frozen is not None and not Path(args.frozen).is_dir():
        raise UserError(f"--frozen {args.frozen} is not a folder: name a Frozen model folder (saved by training)")
    if args.pretrained is None:
        print(f"mmfm serve: warning: no --pretrained, {args.model} has random weights: its labels mean nothing",
              file=sys.stderr)
    model = _inference_model("serve", args.model, args.pretrained, args.device, precision)
    frozen = None
    if args.frozen is not None:
        from .frozen import load_frozen
        frozen = load_frozen(args.frozen, device=args.device)
        if frozen[1] is None:
            raise UserError(f"--frozen {args.frozen} has no tokenizer: save the model with its tokenizer")
    name = args.model + (f" ({args.pretrained})" if args.pretrained else " (random weights)")
    app = build_app(model, index=index, frozen=frozen, name=name, max_upload_bytes=args.max_upload_mb * 2**20,
                    caption_options={"max_new_tokens": args.max_new_tokens})
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mmfm serve: warning: --host {args.host}: anyone who can reach this machine can use the page",
              file=sys.stderr)
    print(f"mmfm serve: http://{args.host}:{args.port}/ (Ctrl-C stops it)", file=sys.stderr, flush=True)
    run(app, host=args.host, port=args.port)
    return 0


def _classify_labels(args) -> tuple[list[str], list[str]]:
    """(class names, prompt templates): --labels as their own prompts, or a dataset's classes and templates."""
    if args.labels is not None:
        from .deploy.classify import parse_labels
        return parse_labels(args.labels), ["{}"]
    from .data.templates import CLASSNAMES, get_classnames, get_templates
    if args.classes.lower() in CLASSNAMES:
        return get_classnames(args.classes), get_templates(args.classes)
    if args.classes.lower() in ("shapes", "digits"):   # the embedded datasets: their primary task
        from .data import get_dataset
        task = next(iter(get_dataset(args.classes.lower(), split="test").zero_shot_tasks().values()))
        return list(task.classnames), list(task.templates)
    raise UserError(f"--classes {args.classes}: no class list for it; use one of "
                    f"{', '.join(sorted(CLASSNAMES) + ['digits', 'shapes'])} or --labels")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it has none (None, off) or says it already."""

    def _get_help_string(self, action):
        help = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in help:
            return help
        return super()._get_help_string(action)


class _EvalHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """Fills in the dataset names only when help is shown (listing them imports the data package)."""

    def add_text(self, text):
        if text and "{datasets}" in text:
            from .data import available_datasets, is_text_corpus
            names = [n for n in available_datasets() if not is_text_corpus(n)]   # a causal LM's, not eval's
            wds = [n for n in names if n.startswith("wds/")]
            listed = ", ".join(n for n in names if not n.startswith("wds/"))
            if wds:   # clip_benchmark's 40-odd WebDataset names would bury the rest
                listed += f", and {len(wds)} clip_benchmark WebDataset sets as wds/<name> (e.g. {wds[0]}, wds/vtab/eurosat)"
            text = text.replace("{datasets}", listed)
        super().add_text(text)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("mmfm")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmfm", description="Train, adapt, evaluate and measure vision-language models.",
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (also: MMFM_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the registered model configs")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("info", help="parameters, weight memory and FLOPs of a model (configs alone, no download)")
    s.add_argument("model", help="a registered config name (see: mmfm models)")
    s.add_argument("--pretrained", default=None, help="checkpoint whose config to describe (file or hub id)")
    s.add_argument("--lora", default=None, help="LoRA preset to apply before counting")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("run", help="run an experiment config (train and/or evaluate models, one comparison table)")
    s.add_argument("config")
    s.add_argument("--out", default=None, help="output folder (default: runs/<name>)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. models.0.train.epochs=2")
    again = s.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="the output folder holds an experiment with another config: continue its checkpoints with this one")
    again.add_argument("--overwrite", action="store_true",
                       help="the output folder holds another experiment: remove its model folders and reports first")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("eval", help="evaluate a model on a dataset", formatter_class=_EvalHelpFormatter,
                       description="Evaluate a model on a dataset; the same evaluations as an experiment's `evals:`.",
                       epilog=EVAL_EPILOG)
    s.add_argument("kind", choices=EVAL_CHOICES)
    s.add_argument("--model", default=None, help="registered model config (`mmfm models`)")
    s.add_argument("--pretrained", default=None, help="checkpoint or identifier; without it the weights are random")
    s.add_argument("--adapter", default=None, metavar="DIR",
                   help="LoRA adapter folder applied to the model first (mmfm's save_lora, or PEFT's, HF CLIPModel too)")
    s.add_argument("--dataset", required=True, help="a dataset name (listed below)")
    s.add_argument("--data-root", default=None, help="the folder the dataset's files are in (not for shapes/digits)")
    s.add_argument("--out", default=None, help="folder for results.json/md and the PNG plots (as `mmfm run`)")
    s.add_argument("--task", default=None, help="zero-shot task of the dataset (e.g. color for shapes)")
    s.add_argument("--protocol", choices=["clip_paper", "clip_benchmark"], default="clip_paper",
                   help="clip_paper (default): the CLIP paper's class names, L-BFGS linear probe on pre-projection "
                        "features, fp32. clip_benchmark: open_clip's published tables: raw CIFAR-100 names, AdamW "
                        "linear probe on normalised embeddings, fp16 on CUDA; for its data name its wds/ set "
                        "(EuroSAT: wds/vtab/eurosat)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default=None)
    s.add_argument("--download", action="store_true", help="download the dataset through torchvision if missing")
    s.add_argument("--method", default=None,
                   help="fewshot: linear_probe (default), zero_shot, lora, coop, clip_adapter, tip_adapter, tip_adapter_f")
    s.add_argument("--shots", type=positive_int, nargs="+", default=None, metavar="K",
                   help="fewshot: examples per class (default: 1 2 4 8 16)")
    s.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S", help="fewshot: seeds (default: 0 1 2)")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("published", help="open_clip's published zero-shot and Flickr30k results (shipped with mmfm)")
    s.add_argument("model", nargs="?", default=None, help="only this model (e.g. ViT-B-32)")
    s.add_argument("pretrained", nargs="?", default=None, help="only these weights (e.g. openai, laion2b_s34b_b79k)")
    s.set_defaults(func=_cmd_published)

    s = sub.add_parser("pretrained", help="the pretrained tags mmfm can load (open_clip's registry)")
    s.set_defaults(func=_cmd_pretrained)

    from .frozen.cli import add_caption_parser, add_vqa_parser
    add_caption_parser(sub)
    add_vqa_parser(sub)

    s = sub.add_parser("shards", help="write WebDataset shards from an image folder + captions file")
    s.add_argument("--images", required=True, help="folder the image paths in --captions are relative to")
    s.add_argument("--captions", required=True, help="CSV, TSV, JSONL or JSON file with path and caption columns "
                                                     "(relative to the working directory)")
    s.add_argument("--label-column", default="auto", help="column of class labels, 'none' for none; auto: "
                                                          "'label' if the file has it")
    s.add_argument("--out", required=True, help="output folder of the shards (read back by --dataset shards)")
    s.add_argument("--maxcount", type=positive_int, default=1000, help="samples per shard")
    s.set_defaults(func=_cmd_shards)

    s = sub.add_parser("classify", help="zero-shot classify images with a CLIP model against labels or a dataset's classes")
    s.add_argument("images", nargs="+", metavar="IMG", help="image files")
    s.add_argument("--model", required=True, help="registered model config (`mmfm models`)")
    s.add_argument("--pretrained", default=None, help="checkpoint or identifier; without it the weights are random")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--labels", default=None, help='comma-separated labels, each its own prompt: "a cat,a dog"')
    what.add_argument("--classes", default=None, metavar="DATASET",
                      help="a dataset's classes with its prompt ensemble: cifar10, cifar100, food101, ...")
    s.add_argument("--top", type=positive_int, default=5, help="labels shown per image")
    s.add_argument("--json", action="store_true", help="print a JSON list: per image its path and labels by probability")
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument("--device", default=None)
    s.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                   help="the model's weights: bf16 or int8 for fast CPU inference, fp16 on a CUDA GPU")
    s.set_defaults(func=_cmd_classify)

    s = sub.add_parser("embed", help="embed a folder of images (and captions) into an index for `mmfm search`")
    s.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="image files, or folders searched recursively")
    s.add_argument("--model", required=True, help="registered model config (`mmfm models`)")
    s.add_argument("--pretrained", default=None, help="checkpoint or identifier; without it the weights are random")
    s.add_argument("--out", required=True, metavar="INDEX",
                   help="index folder: image_embeddings.npy, text_embeddings.npy, meta.json")
    s.add_argument("--texts", default=None, metavar="FILE", help="captions to embed too, one per line")
    s.add_argument("--batch-size", type=positive_int, default=64)
    s.add_argument("--workers", type=non_negative_int, default=2, help="image decoding processes (0: in this process)")
    s.add_argument("--device", default=None)
    s.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                   help="the model's weights: bf16 or int8 for fast CPU inference, fp16 on a CUDA GPU; recorded in "
                        "the index, whose queries are embedded the same way")
    s.add_argument("--ann", action="store_true",
                   help="also build an approximate nearest-neighbour graph (HNSW, faiss: pip install 'mmfm[ann]') "
                        "that `mmfm search` and `serve` then use: for large indexes (at 1M rows ~0.5 ms instead of "
                        "~43 ms a query, recall@10 ~0.99)")
    s.set_defaults(func=_cmd_embed)

    s = sub.add_parser("search", help="search an index from `mmfm embed` by text or by image (by cosine; exact "
                                      "unless the index has an --ann graph)")
    s.add_argument("index", metavar="INDEX", help="index folder written by `mmfm embed`")
    s.add_argument("query", nargs="?", default=None, help="text query (or --image)")
    s.add_argument("--image", default=None, metavar="IMG", help="find the images most similar to this one")
    s.add_argument("--top-k", type=positive_int, default=5)
    s.add_argument("--json", action="store_true", help="print a JSON list of hits: rank, path, cosine score")
    s.add_argument("--sheet", default=None, metavar="OUT.png", help="also write a PNG contact sheet of the hits")
    s.add_argument("--device", default=None)
    s.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help="the query encoder's weights; default and only choice: the index's (`mmfm embed --precision`)")
    s.add_argument("--exact", action="store_true", help="rank every row even if the index has an approximate graph")
    s.add_argument("--ef-search", type=positive_int, default=None, metavar="N",
                   help="candidates the approximate graph keeps while searching (default 256; more: higher "
                        "recall, slower)")
    s.set_defaults(func=_cmd_search)

    s = sub.add_parser("export", help="export a model's image and text encoders to ONNX (for onnxruntime)")
    s.add_argument("model_dir", help="a saved model folder (e.g. runs/<name>/<model>/model)")
    s.add_argument("--format", choices=["onnx"], default="onnx")
    s.add_argument("--out", required=True, help="folder for image_encoder.onnx and text_encoder.onnx")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("serve", help="a local web page: classify an uploaded image, search an index, caption")
    s.add_argument("--model", required=True, help="registered model config (`mmfm models`)")
    s.add_argument("--pretrained", default=None, help="checkpoint or identifier; without it the weights are random")
    s.add_argument("--index", default=None, metavar="INDEX", help="index folder from `mmfm embed` (same model), "
                                                                  "for search by text")
    s.add_argument("--frozen", default=None, metavar="DIR", help="a saved Frozen model folder, for captions")
    s.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help="the CLIP model's weights: bf16 or int8 for CPU inference, fp16 on a CUDA GPU; default: "
                        "the --index's precision, else fp32 (an index's queries use its precision)")
    s.add_argument("--max-new-tokens", type=positive_int, default=20, help="most tokens per caption")
    s.add_argument("--max-upload-mb", type=positive_int, default=10, help="largest image upload accepted")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=positive_int, default=8000, help="port to listen on")
    s.add_argument("--device", default=None)
    s.set_defaults(func=_cmd_serve)

    # Options of the data a command reads, and of every command: kept out of the sections above.
    sub.choices["eval"].add_argument(
        "--annotations", default=None, metavar="FILE",
        help="custom data: the CSV/JSONL annotations file (default: <split>.csv or captions.csv in --data-root; "
             "'{split}.csv' names one file per split)")
    for name, s in sub.choices.items():
        if not issubclass(s.formatter_class, HelpFormatter):
            s.formatter_class = HelpFormatter
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error (also: MMFM_DEBUG=1)")
        if name in ("run", "eval", "caption", "vqa", "classify", "export", "embed", "search", "serve"):
            s.add_argument("--threads", type=positive_int, default=None, metavar="N",
                           help="CPU threads for PyTorch (intra- and inter-op); default: PyTorch's choice, "
                                "one per core. Use fewer on a shared machine")
    return p


def _check_common(args) -> None:
    """Checks of options several commands share, before any work: a clear line instead of a failure later."""
    out = getattr(args, "out", None)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file, not a folder: name a folder (it is created if missing)")
    device = getattr(args, "device", None)
    if device is not None:
        _check_device(device)
    if getattr(args, "threads", None):
        _set_threads(args.threads)


# Commands that only run models forward: their activations are reused in place from call to call (see
# mmfm.util.malloc). Not run or the training parts: training has its own policy (the Trainer sets it).
INFERENCE_COMMANDS = ("eval", "caption", "vqa", "classify", "embed", "search", "serve")


def _inference_memory_policy(command: str) -> bool:
    """Keep large blocks in the heap for an inference command (MMFM_KEEP_LARGE_BLOCKS=0 leaves glibc's default)."""
    if command not in INFERENCE_COMMANDS or os.environ.get("MMFM_KEEP_LARGE_BLOCKS", "1").strip() == "0":
        return False
    from .util.malloc import keep_large_blocks
    return keep_large_blocks()


def _check_device(device: str) -> None:
    import torch
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is "
                            f"False); use --device cpu") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0.."
                            f"cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here; use --device cpu")


def _set_threads(n: int) -> None:
    """Set before any heavy work: on a shared machine, one thread per core for every process oversubscribes
    the cores and everything slows down many times over."""
    import torch
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # allowed once per process, before inter-op work (a second main() in one process)
        pass


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: a message for the user, not a bug report. The YAML and training
    ones count only if their module was loaded (so one of them can have been raised)."""
    types: list[type[BaseException]] = [ValueError, KeyError, OSError]
    for module, name in (("yaml", "YAMLError"), ("mmfm.train.trainer", "TrainingDiverged")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            types.append(cls)
    return tuple(types)


def _is_out_of_memory(e: BaseException) -> bool:
    """A GPU out-of-memory error: the user's to fix (smaller batch), though PyTorch makes it a RuntimeError."""
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    return oom is not None and isinstance(e, oom)


def _one_line(e: BaseException) -> str:
    """The exception's message on one line (a KeyError's str() is its repr; use the text it was given)."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(line.strip() for line in msg.splitlines() if line.strip()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("MMFM_DEBUG", "").strip() not in ("", "0")
    try:
        _check_common(args)
        _inference_memory_policy(args.command)
        code = args.func(args)
        if code == 0 and "RANK" in os.environ:     # a torchrun job: leave the process group as PyTorch asks
            from .train.distributed import shutdown_distributed
            shutdown_distributed()
        return code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"mmfm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if _is_out_of_memory(e):
            print(f"mmfm {args.command}: error: out of GPU memory ({str(e).splitlines()[0]}): lower --batch-size "
                  f"(or the config's batch size), use a smaller model, or --device cpu", file=sys.stderr)
            return 2
        if isinstance(e, _user_error_types()):
            print(f"mmfm {args.command}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        # Not bad input, maybe a bug: say what it was and how to see where it came from.
        print(f"mmfm {args.command}: error: {type(e).__name__}: {_one_line(e)} (run again with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
