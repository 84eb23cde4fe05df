"""The registry of adaptation methods: what a run config's ``adapt:`` list names.

    adapt:
      - {method: lora, preset: qv-r16}
      - {method: lock, image: 1}            # lock the image tower, its last group trainable
      - {method: wise_ft, alpha: [0.5, 1.0]} # after training: one evaluated model per alpha

A method is a small function ``fn(model, options, context) -> model`` plus a pydantic model of its
options (unknown keys are refused when the config loads, naming the key) and *when* it runs:
``before_training`` (right after the model is built) or ``after_training`` (before the final
evaluations). An after-training method may return several models, ``{label suffix: model}``
(WiSE-FT with a list of alphas), each evaluated as its own row. Steps run in list order.

Add one in your own file::

    @register_adaptation("my_method", MyOptions)
    def my_method(model, opts, context): ...
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

When = Literal["before_training", "after_training"]


class Options(BaseModel):
    """Base of every method's options: unknown keys are an error, not silently ignored."""
    model_config = ConfigDict(extra="forbid")


@dataclass
class AdaptContext:
    """What a method may need beyond the model: ``initial`` is the model as built, before any adaptation
    and training (WiSE-FT interpolates towards it)."""
    initial: nn.Module | None = None


@dataclass(frozen=True)
class Adaptation:
    name: str
    fn: Callable[[nn.Module, Any, AdaptContext], "nn.Module | Mapping[str, nn.Module]"]
    options: type[BaseModel]
    when: When = "before_training"
    clip_only: bool = False          # needs a CLIP-family model (towers, LoRA targets); Frozen refuses it


@dataclass(frozen=True)
class AdaptStep:
    """One validated entry of ``adapt:``."""
    method: str
    options: BaseModel

    @property
    def adaptation(self) -> Adaptation:
        return ADAPTATIONS[self.method]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.options.model_dump(mode="json", exclude_unset=True)}


ADAPTATIONS: dict[str, Adaptation] = {}


def register_adaptation(name: str, options: type[BaseModel] = Options, when: When = "before_training",
                        clip_only: bool = False, overwrite: bool = False):
    """Decorator: make ``fn(model, options, context)`` available as ``{method: name, ...}`` in ``adapt:``."""
    if when not in ("before_training", "after_training"):
        raise ValueError(f"when must be 'before_training' or 'after_training', got {when!r}")

    def register(fn):
        if name in ADAPTATIONS and not overwrite:
            raise ValueError(f"adaptation method {name!r} is already registered")
        ADAPTATIONS[name] = Adaptation(name, fn, options, when, clip_only)
        return fn
    return register


def parse_step(step: Mapping[str, Any] | AdaptStep) -> AdaptStep:
    """``{method: name, **options}`` -> an :class:`AdaptStep`; a ValueError of one line naming the problem."""
    if isinstance(step, AdaptStep):
        return step
    if not isinstance(step, Mapping) or "method" not in step:
        raise ValueError(f"an adapt step is a mapping {{method: NAME, ...options}}, got {step!r}; "
                         f"methods: {', '.join(ADAPTATIONS)}")
    name = step["method"]
    if name not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation method {name!r}; registered: {', '.join(ADAPTATIONS)}")
    cls = ADAPTATIONS[name].options
    try:
        options = cls.model_validate({k: v for k, v in step.items() if k != "method"})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(x) for x in err["loc"]) or "options"
            problems.append(f"unknown key {key!r}; allowed keys: {sorted(cls.model_fields)}"
                            if err["type"] == "extra_forbidden"
                            else f"{key}: {err['msg'].removeprefix('Value error, ')}")
        raise ValueError(f"adaptation {name}: " + "; ".join(problems)) from None
    return AdaptStep(name, options)


def apply_adaptations(model: nn.Module, steps: Sequence[Mapping[str, Any] | AdaptStep],
                      context: AdaptContext | None = None) -> dict[str, nn.Module]:
    """Run ``steps`` in order on ``model``: ``{label suffix: model}``, ``{"": model}`` unless a step made
    several (each later step then applies to each of them)."""
    context = context or AdaptContext()
    variants = {"": model}
    for step in map(parse_step, steps):
        method = step.adaptation
        out: dict[str, nn.Module] = {}
        for suffix, m in variants.items():
            result = method.fn(m, step.options, context)
            if isinstance(result, nn.Module):
                out[suffix] = result
            else:
                out.update({suffix + s: v for s, v in result.items()})
        variants = out
    return variants


def split_steps(steps: Sequence[Mapping[str, Any] | AdaptStep]) -> tuple[list[AdaptStep], list[AdaptStep]]:
    """(before-training steps, after-training steps), each in list order."""
    parsed = [parse_step(s) for s in steps]
    return ([s for s in parsed if s.adaptation.when == "before_training"],
            [s for s in parsed if s.adaptation.when == "after_training"])


def initial_copy(model: nn.Module, steps: Sequence[Mapping[str, Any] | AdaptStep]) -> nn.Module | None:
    """A copy of the model as built when an after-training step needs it (WiSE-FT), else None (no memory)."""
    return copy.deepcopy(model) if split_steps(steps)[1] else None


# ---------------------------------------------------------------------------------------------
# Built-in methods
class LoraOptions(Options):
    preset: str | None = Field(None, description="a name of LORA_PRESETS (default qv-r16)")
    r: int | None = Field(None, ge=1)
    alpha: float | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    target_modules: list[str] | str | None = None
    towers: list[str] | str = ["image", "text"]
    bias: Literal["none", "all", "lora_only"] = "none"
    train_logit_scale: bool = False

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v):
        from .lora import LORA_PRESETS
        if v is not None and v not in LORA_PRESETS:
            raise ValueError(f"unknown LoRA preset {v!r}; presets: {sorted(LORA_PRESETS)}")
        return v


@register_adaptation("lora", LoraOptions, clip_only=True)
def _lora(model, opts: LoraOptions, context):
    """LoRA adapters (:func:`mmfm.adapt.apply_lora`): only the adapters train."""
    from .lora import apply_lora
    kwargs = opts.model_dump()
    kwargs["towers"] = (kwargs["towers"],) if isinstance(kwargs["towers"], str) else tuple(kwargs["towers"])
    return apply_lora(model, **kwargs)


class LockOptions(Options):
    image: int | None = Field(None, ge=0, description="lock the image tower, this many last groups trainable")
    text: int | None = Field(None, ge=0, description="lock the text tower, this many last groups trainable")

    @model_validator(mode="after")
    def _some_tower(self):
        if self.image is None and self.text is None:
            raise ValueError("name a tower to lock: image: N and/or text: N (N = last groups left trainable)")
        return self


@register_adaptation("lock", LockOptions, clip_only=True)
def _lock(model, opts: LockOptions, context):
    """Locked towers (LiT-style) through the towers' own ``lock`` (CLIP.lock_image_tower / lock_text_tower)."""
    if opts.image is not None:
        model.lock_image_tower(opts.image)
    if opts.text is not None:
        model.lock_text_tower(opts.text)
    return model


class FreezeOptions(Options):
    prefixes: list[str] = Field(min_length=1, description="parameter-name prefixes, e.g. ['visual', 'text.transformer.blocks.0']")


@register_adaptation("freeze", FreezeOptions)
def _freeze(model, opts: FreezeOptions, context):
    """Freeze parameters by name prefix: the same rule (and error) as ``TrainConfig.freeze``."""
    from ..train.config import TrainConfig
    from ..train.trainer import apply_freezing
    apply_freezing(model, TrainConfig(freeze=list(opts.prefixes)))
    return model


class WiseFtOptions(Options):
    alpha: float | list[float] = Field(description="weight of the fine-tuned model (0 = the initial model); "
                                                   "a list: one evaluated model per alpha")

    @field_validator("alpha")
    @classmethod
    def _some_alpha(cls, v):
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError(f"give one or more different alphas, got {v}")
        return v


@register_adaptation("wise_ft", WiseFtOptions, when="after_training")
def _wise_ft(model, opts: WiseFtOptions, context):
    """WiSE-FT (:func:`mmfm.adapt.wise_ft`): interpolate the trained model with its initial weights."""
    from .wise_ft import wise_ft
    if context.initial is None:
        raise ValueError("wise_ft needs the model's initial weights (AdaptContext.initial)")
    if isinstance(opts.alpha, list):
        return {f"@alpha={a:g}": wise_ft(context.initial, model, a) for a in opts.alpha}
    return wise_ft(context.initial, model, opts.alpha)
