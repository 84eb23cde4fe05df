"""The ``mmfm`` command. Thin: parses arguments and calls the public API."""
from __future__ import annotations

import argparse
import json
import sys


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
    from pathlib import Path

    import yaml
    path = Path(args.config)
    raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    if isinstance(raw, dict) and "frozen_demo" in raw:
        # The Frozen demonstration has its own pipeline (text-only LM first, then Frozen on top).
        from .frozen.demo import load_demo_config, run_demo
        overrides = {}
        for item in args.set or []:
            key, _, value = item.partition("=")
            overrides[key.removeprefix("frozen_demo.")] = yaml.safe_load(value)
        cfg = load_demo_config(path, overrides)
        run_demo(args.out or Path("runs") / cfg.name, cfg, progress=True)
        return 0
    from .experiment import run_experiment
    existing = "resume" if args.resume else "overwrite" if args.overwrite else "refuse"
    run_experiment(args.config, out_dir=args.out, overrides=args.set or [], existing=existing)
    return 0


def _cmd_eval(args) -> int:
    from .eval import run_eval
    result = run_eval(args.kind, model_name=args.model, pretrained=args.pretrained, dataset=args.dataset,
                      data_root=args.data_root, out_dir=args.out, batch_size=args.batch_size, device=args.device,
                      task=args.task, dataset_kwargs={"download": True} if args.download else None)
    print(result.to_markdown() if hasattr(result, "to_markdown") else json.dumps(result.to_dict(), indent=2, default=str))
    return 0


EVAL_CHOICES = ["zeroshot", "linear-probe", "fewshot", "retrieval"]   # = mmfm.eval.registry.cli_choices()
EVAL_EPILOG = """datasets: {datasets}

examples:
  mmfm eval zeroshot --model RN-S-64 --pretrained runs/quickstart/clip-rn-s/model --dataset shapes --task color
  mmfm eval linear-probe --model ViT-B-32 --pretrained openai --dataset flowers102 --data-root ~/data --out out/
"""


class _EvalHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills in the dataset names only when help is shown (listing them imports the data package)."""

    def add_text(self, text):
        if text and "{datasets}" in text:
            from .data import available_datasets
            text = text.replace("{datasets}", ", ".join(available_datasets()))
        super().add_text(text)


def _cmd_shards(args) -> int:
    from .data.shards import shards_from_folder
    paths = shards_from_folder(args.images, args.captions, args.out, maxcount=args.maxcount)
    print(f"wrote {len(paths)} shard(s) to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmfm", description="Train, adapt, evaluate and measure vision-language models.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the registered model configs")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("info", help="parameters, weight memory and FLOPs of a model (configs alone, no download)")
    s.add_argument("model")
    s.add_argument("--pretrained", default=None)
    s.add_argument("--lora", default=None, help="LoRA preset to apply before counting")
    s.add_argument("--json", action="store_true")
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
    s.add_argument("--dataset", required=True, help="a dataset name (listed below)")
    s.add_argument("--data-root", default=None, help="the folder the dataset's files are in (not for shapes/digits)")
    s.add_argument("--out", default=None, help="folder for results.json/md and the PNG plots (as `mmfm run`)")
    s.add_argument("--task", default=None, help="zero-shot task of the dataset (e.g. color for shapes)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default=None)
    s.add_argument("--download", action="store_true", help="download the dataset through torchvision if missing")
    s.set_defaults(func=_cmd_eval)

    from .frozen.cli import add_caption_parser, add_vqa_parser
    add_caption_parser(sub)
    add_vqa_parser(sub)

    s = sub.add_parser("shards", help="write WebDataset shards from an image folder + captions file")
    s.add_argument("--images", required=True)
    s.add_argument("--captions", required=True, help="CSV or JSONL with path and caption columns")
    s.add_argument("--out", required=True)
    s.add_argument("--maxcount", type=int, default=1000)
    s.set_defaults(func=_cmd_shards)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError) as e:
        # Bad input is reported as one clear line, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"mmfm {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
