"""Shapes: a procedurally generated, captioned image dataset (no download).

Each image shows 1..``max_objects`` coloured shapes on a dark background and
comes with several captions ("a small red circle at the top left", "two blue
squares", "a drawing of a star", ...) and a label for every attribute (shape,
colour, size, position, count).  It is the library's "hello world": a tiny
CLIP trained for a few CPU minutes learns it well, and it supports controlled
experiments (held-out attribute combinations for compositional
generalisation, held-out attribute values for domain adaptation, VQA pairs).

Generation is lazy and deterministic: sample ``i`` is a pure function of
``(seed, split, i)`` and is drawn with PIL when requested, so a dataset of a
million samples costs nothing to construct, and every worker / rerun sees
identical pixels and captions.  Two steps, kept apart so captions and labels
are available without rendering:

1. :meth:`Shapes.scene` draws a :class:`ShapeScene` (objects, geometry,
   colours, captions) from a per-index RNG;
2. :func:`render_scene` paints it.

Label indices always refer to the full vocabularies (:data:`SHAPES`,
:data:`COLORS`, ...) whatever filters are active, so datasets with different
``include``/``exclude`` settings share one label space (needed to adapt a
model trained without purple to purple later).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product

import PIL.Image
from PIL import ImageChops, ImageDraw

from .base import MultimodalDataset, Sample, ZeroShotTask, ZeroShotTasks

__all__ = [
    "ATTRIBUTES",
    "COLORS",
    "COUNTS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "ShapeObject",
    "ShapeScene",
    "Shapes",
    "questions",
    "render_scene",
]

# --------------------------------------------------------------------------
# Vocabularies.  Chosen to be trivially separable at 32-64 px: silhouettes
# with different topology/corners, and colours far apart in RGB.
# --------------------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "heart": "hearts",
}
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 80, 235),
    "yellow": (245, 220, 30),
    "purple": (145, 50, 200),
    "orange": (255, 135, 15),
    "pink": (255, 125, 205),
    "cyan": (40, 215, 230),
}
COLORS: tuple[str, ...] = tuple(COLOR_RGB)
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "centre")
COUNTS: tuple[str, ...] = ("one", "two", "three", "four", "five")
ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "position", "count")

# "count" last: its allowed values depend on the others' (see Shapes.__init__)
_VOCAB: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "position": POSITIONS,
    "count": COUNTS,
}
_ATTR_ALIASES = {"colour": "color", "shapes": "shape", "colors": "color", "colours": "color"}
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}

# Geometry, in fractions of the image side.  A lone object may be large and
# jittered; with several objects they shrink and sit on a fixed grid so they
# never overlap (centre box ends at 0.62, quadrant boxes start/end at 0.12/0.36).
_SINGLE_RADIUS = {0: 0.13, 1: 0.22}  # size index -> radius
_MULTI_RADIUS = {0: 0.09, 1: 0.12}
_SINGLE_QUADRANT, _MULTI_QUADRANT, _JITTER = 0.27, 0.24, 0.03

_BACKGROUND = (18, 18, 18)
_TEXTURE_BACKGROUNDS = ((18, 18, 18), (35, 28, 45), (22, 40, 34), (45, 36, 22), (30, 34, 48))
_NOISE_AMPLITUDE = 28
_MAX_TRIES = 1000

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """A 64-bit integer hash with good avalanche; turns (seed, split, index)
    into well-separated RNG seeds so neighbouring indices are unrelated."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(*words: str) -> str:
    """Noun phrase with the right indefinite article: ("orange", "star") -> "an orange star"."""
    return f"{_article(words[0])} {' '.join(words)}"


def _where(position: str) -> str:
    return "in the centre" if position == "centre" else f"at the {position}"


# --------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeObject:
    """One drawn object.  Attribute fields are indices into the vocabularies."""

    shape: int
    color: int
    size: int
    position: int
    cx: float  # centre and radius as fractions of the image side
    cy: float
    radius: float
    rgb: tuple[int, int, int]

    def names(self) -> dict[str, str]:
        return {
            "shape": SHAPES[self.shape],
            "color": COLORS[self.color],
            "size": SIZES[self.size],
            "position": POSITIONS[self.position],
        }


@dataclass(frozen=True)
class ShapeScene:
    """Everything needed to render and describe one image.
    ``objects[0]`` is the main object whose attributes are the labels."""

    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int]
    noise_seed: int | None  # None: flat background
    captions: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.objects)

    def attributes(self) -> dict[str, int]:
        main = self.objects[0]
        return {
            "shape": main.shape,
            "color": main.color,
            "size": main.size,
            "position": main.position,
            "count": self.count - 1,
        }


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------
def _polygon_points(cx: float, cy: float, radii: Sequence[float], start_deg: float = -90.0):
    n = len(radii)
    return [
        (
            cx + r * math.cos(math.radians(start_deg + 360.0 * k / n)),
            cy + r * math.sin(math.radians(start_deg + 360.0 * k / n)),
        )
        for k, r in enumerate(radii)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    """Paint one filled shape inside the box [cx-r, cx+r] x [cy-r, cy+r]."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        h = 0.85 * r  # slightly smaller so its area is close to the circle's
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        # equilateral, pointing up, shifted down so its bounding box is centred
        rr = 1.1 * r
        draw.polygon(_polygon_points(cx, cy + 0.25 * rr, [rr, rr, rr]), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon_points(cx, cy + 0.05 * r, [r, 0.45 * r] * 5), fill=fill)
    elif shape == "cross":  # an upright "plus"
        t = 0.33 * r
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    elif shape == "heart":
        lobe = 0.5 * r
        for sx in (-1, 1):
            lx, ly = cx + sx * 0.47 * r, cy - 0.35 * r
            draw.ellipse((lx - lobe, ly - lobe, lx + lobe, ly + lobe), fill=fill)
        draw.polygon([(cx - 0.95 * r, cy - 0.2 * r), (cx + 0.95 * r, cy - 0.2 * r), (cx, cy + 0.9 * r)], fill=fill)
    else:  # pragma: no cover - guarded by the vocabulary
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: ShapeScene, image_size: int) -> PIL.Image.Image:
    """Draw ``scene`` as an ``image_size`` x ``image_size`` RGB image."""
    s = image_size
    img = PIL.Image.new("RGB", (s, s), scene.background)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw_shape(draw, SHAPES[obj.shape], obj.cx * s, obj.cy * s, obj.radius * s, obj.rgb)
    if scene.noise_seed is not None:
        # Grey pixel noise in [-A, A] on everything: makes the task less
        # trivially "count coloured pixels" while keeping shapes legible.
        # randbytes + a lookup table keeps this fast and deterministic.
        raw = random.Random(scene.noise_seed).randbytes(s * s)
        amp = _NOISE_AMPLITUDE
        noise = PIL.Image.frombytes("L", (s, s), raw).point([v * 2 * amp // 255 for v in range(256)])
        img = ImageChops.add(img, PIL.Image.merge("RGB", (noise, noise, noise)), 1.0, -amp)
    return img


# --------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------
def _single_captions(o: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(full, short, partial) phrasings for one object.  Full ones mention
    every attribute; short ones shape + colour; partial ones a single
    attribute, phrased like the zero-shot prompts so the text encoder has seen
    such sentences."""
    shape, color, size, where = o["shape"], o["color"], o["size"], _where(o["position"])
    full = [
        f"{_np(size, color, shape)} {where}",
        f"there is {_np(size, color, shape)} {where}",
        f"{where}, there is {_np(size, color, shape)}",
        f"a picture of {_np(size, color, shape)} {where}",
    ]
    short = [
        _np(color, shape),
        f"a picture of {_np(color, shape)}",
        f"a photo of {_np(color, shape)}",
        f"a drawing of {_np(color, shape)}",
        _np(size, color, shape),
        f"{_np(color, shape)} {where}",
    ]
    partial = [
        _np(shape),
        f"a photo of {_np(shape)}",
        f"a drawing of {_np(shape)}",
        f"{_np(color)} shape",
        f"something {color}",
        f"{_np(color)} object",
        f"{_np(size, shape)} {where}",
    ]
    return full, short, partial


def _group_captions(o: dict[str, str], count: str) -> tuple[list[str], list[str], list[str]]:
    """Phrasings for ``count`` identical objects ("two blue squares")."""
    shapes, color, size = SHAPE_PLURALS[o["shape"]], o["color"], o["size"]
    full = [
        f"{count} {size} {color} {shapes}",
        f"there are {count} {size} {color} {shapes}",
        f"a picture of {count} {size} {color} {shapes}",
    ]
    short = [
        f"{count} {color} {shapes}",
        f"a photo of {count} {color} {shapes}",
        f"there are {count} {color} {shapes}",
    ]
    partial = [f"{count} {shapes}", f"{count} {color} objects", f"a picture of {count} objects", f"some {shapes}"]
    return full, short, partial


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _mixed_captions(objs: list[dict[str, str]], count: str) -> tuple[list[str], list[str], list[str]]:
    """Phrasings for different objects ("a red circle and a blue square"),
    main object first."""
    detailed = _join([f"{_np(o['size'], o['color'], o['shape'])} {_where(o['position'])}" for o in objs])
    plain = _join([_np(o["color"], o["shape"]) for o in objs])
    full = [detailed, f"{count} objects: {detailed}"]
    short = [plain, f"there are {count} objects: {plain}", f"a picture of {plain}"]
    main = _np(objs[0]["color"], objs[0]["shape"])
    partial = [f"{count} objects", f"a picture of {count} shapes", f"{main} and other shapes"]
    return full, short, partial


def _pick_captions(rng: random.Random, full, short, partial, n: int) -> list[str]:
    """One full description, one short (shape + colour) caption, then random
    others without repetition: every image has a caption with all labelled
    attributes, and most captions name both shape and colour."""
    chosen = [rng.choice(full)]
    if n > 1:
        chosen.append(rng.choice(short))
    pool = [c for c in full + short + partial if c not in chosen]
    chosen.extend(rng.sample(pool, min(max(n - 2, 0), len(pool))))
    return chosen[:n]


# --------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------
#: One held-out combination: {"color": "red", "shape": "circle"} or [("color", "red"), ("shape", "circle")].
Combination = Mapping[str, str | int] | Sequence[tuple[str, str | int]]


def _attr_name(attr: str) -> str:
    attr = _ATTR_ALIASES.get(attr, attr)
    if attr not in _VOCAB:
        raise ValueError(f"unknown Shapes attribute {attr!r}; known: {list(ATTRIBUTES)}")
    return attr


def _value_index(attr: str, value: str | int) -> int:
    """Class index of ``value`` (a name; counts may also be given as 1..5)."""
    vocab = _VOCAB[attr]
    if attr == "count" and isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= len(vocab):
            raise ValueError(f"count must be in 1..{len(vocab)}, got {value}")
        return value - 1
    if value not in vocab:
        raise ValueError(f"unknown {attr} {value!r}; known: {list(vocab)}")
    return vocab.index(value)


def _normalise_holdout(holdout: Combination | Iterable[Combination] | None) -> list[dict[str, int]]:
    """Accept the convenient spellings of held-out combinations:

    * ``{"color": "red", "shape": "circle"}`` - one combination;
    * ``[("color", "red"), ("shape", "circle")]`` - one combination as pairs;
    * a list of either of those - several combinations.
    """
    if not holdout:
        return []
    if isinstance(holdout, Mapping):
        combos: list = [holdout]
    else:
        items = list(holdout)

        def is_pair(x: object) -> bool:  # ("color", "red"), as opposed to a whole combination
            return isinstance(x, tuple | list) and len(x) == 2 and isinstance(x[0], str) and (
                x[0] in _VOCAB or x[0] in _ATTR_ALIASES
            )

        combos = [items] if all(is_pair(x) for x in items) else items
    out = []
    for combo in combos:
        pairs = combo.items() if isinstance(combo, Mapping) else combo
        norm: dict[str, int] = {}
        for attr, value in pairs:
            attr = _attr_name(attr)
            norm[attr] = _value_index(attr, value)
        if not norm:
            raise ValueError("empty holdout combination")
        out.append(norm)
    return out


def _normalise_filter(spec: Mapping[str, Iterable[str | int]] | None) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for attr, values in (spec or {}).items():
        attr = _attr_name(attr)
        if isinstance(values, str | int):
            values = [values]
        out[attr] = {_value_index(attr, v) for v in values}
    return out


def _matches(combo: Mapping[str, int], attrs: Mapping[str, int]) -> bool:
    return all(attrs[a] == v for a, v in combo.items())


# --------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------
class Shapes(MultimodalDataset):
    """Procedurally generated captioned shapes, generated lazily by index.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each uses its own seed
            stream, so the splits are different draws.
        size: number of samples (default 20,000 for train, 1,000 otherwise).
            Costs nothing: samples are generated on demand.
        image_size: side of the square images in pixels.
        seed: dataset seed; the same ``(seed, split, index)`` always gives the
            same image and captions.
        max_objects: 1 (default, the easy "quickstart" task) .. 5 objects.
        mixed_objects: with several objects, ``False`` draws copies of the main
            object ("two blue squares"); ``True`` draws different shapes or
            colours ("a red circle and a blue square").
        textures: add a tinted, noisy background (harder, less synthetic).
        color_jitter: per-channel random offset (+-) of object colours.
        captions_per_image: captions per sample (first = full description).
        holdout: attribute combinations that never occur in ``train``, e.g.
            ``{"color": "red", "shape": "circle"}`` or
            ``[("color", "red"), ("shape", "circle")]`` (one combination) or a
            list of such combinations.  ``val``/``test`` exclude them too,
            unless ``only_holdout=True``.
        only_holdout: (``val``/``test``) draw only images whose main object is
            a held-out combination - the compositional-generalisation set.
        include / exclude: restrict attribute values in every split, e.g.
            ``exclude={"color": ["purple", "orange"]}`` (a held-out domain) and
            ``include={"color": ["purple", "orange"]}`` (that domain alone).
            Values are names; counts may also be integers.
    """

    name = "shapes"
    label_name = "shape"

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        image_size: int = 64,
        seed: int = 0,
        max_objects: int = 1,
        mixed_objects: bool = False,
        textures: bool = False,
        color_jitter: int = 10,
        captions_per_image: int = 4,
        holdout: Combination | Iterable[Combination] | None = None,
        only_holdout: bool = False,
        include: Mapping[str, Iterable[str | int]] | None = None,
        exclude: Mapping[str, Iterable[str | int]] | None = None,
    ) -> None:
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {list(_SPLIT_IDS)}, got {split!r}")
        if not 1 <= max_objects <= len(COUNTS):
            raise ValueError(f"max_objects must be in 1..{len(COUNTS)}, got {max_objects}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if captions_per_image < 1:
            raise ValueError("captions_per_image must be >= 1")
        self.split = split
        self.num_samples = int(size if size is not None else (20_000 if split == "train" else 1_000))
        if self.num_samples < 0:
            raise ValueError("size must be >= 0")
        self.image_size = image_size
        self.seed = seed
        self.max_objects = max_objects
        self.mixed_objects = mixed_objects
        self.textures = textures
        self.color_jitter = color_jitter
        self.captions_per_image = captions_per_image
        self.holdout = _normalise_holdout(holdout)
        self.only_holdout = only_holdout
        if only_holdout and not self.holdout:
            raise ValueError("only_holdout=True needs a holdout")
        if only_holdout and split == "train":
            raise ValueError("held-out combinations never appear in the train split; use split='val' or 'test'")

        # Allowed values per attribute (class indices), after include/exclude.
        inc, exc = _normalise_filter(include), _normalise_filter(exclude)
        allowed: dict[str, list[int]] = {}
        for attr, vocab in _VOCAB.items():
            n = max_objects if attr == "count" else len(vocab)
            values = [v for v in range(n) if (attr not in inc or v in inc[attr]) and v not in exc.get(attr, ())]
            if attr == "count":  # objects need distinct positions (and distinct looks when mixed)
                room = len(allowed["position"])
                if mixed_objects:
                    room = min(room, len(allowed["shape"]) * len(allowed["color"]))
                values = [c for c in values if c + 1 <= room]
            if not values:
                raise ValueError(f"the include/exclude filters leave no allowed {attr}")
            allowed[attr] = values
        self._allowed = allowed
        if only_holdout:
            # only combinations whose values survive the filters can be drawn
            self._only_combos = [
                c for c in self.holdout if all(v in allowed[a] for a, v in c.items())
            ]
            if not self._only_combos:
                raise ValueError("no held-out combination is compatible with the include/exclude filters")
        elif self.holdout:
            # make sure rejection sampling can succeed: some single object must be allowed
            free = any(
                not any(_matches(c, dict(zip(ATTRIBUTES, combo, strict=True))) for c in self.holdout)
                for combo in product(*(allowed[a] for a in ATTRIBUTES))
            )
            if not free:
                raise ValueError("the holdout combinations exclude every allowed image")

        self.classes = list(SHAPES)
        self.attribute_classes = {
            "shape": list(SHAPES),
            "color": list(COLORS),
            "size": list(SIZES),
            "position": list(POSITIONS),
            "count": list(COUNTS[:max_objects]),
        }
        self.templates = ["a photo of a {}.", "a {}.", "a drawing of a {}."]
        self.attribute_templates = {
            "color": ["a {} shape.", "something {}.", "a {} object."],
            "size": ["a {} shape.", "a {} object.", "something {}."],
            "position": ["a shape at the {}.", "an object at the {}.", "something at the {}."],
            "count": ["{} objects.", "a picture of {} shapes.", "there are {} things."],
        }

    # ----------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return self.num_samples

    # ------------------------------------------------------------ generation
    def _rng(self, i: int) -> random.Random:
        x = _splitmix64(_splitmix64(_splitmix64(self.seed & _MASK64) ^ _SPLIT_IDS[self.split]) ^ i)
        return random.Random(x)

    def _draw_attributes(self, rng: random.Random) -> list[dict[str, int]] | None:
        """Draw the objects' attributes; ``None`` if a holdout rule rejects them."""
        al = self._allowed
        fixed: dict[str, int] = dict(rng.choice(self._only_combos)) if self.only_holdout else {}
        count = fixed["count"] + 1 if "count" in fixed else rng.choice(al["count"]) + 1
        main = {a: fixed[a] if a in fixed else rng.choice(al[a]) for a in ("shape", "color", "size", "position")}
        main["count"] = count - 1
        objs = [main]
        free_positions = [p for p in al["position"] if p != main["position"]]
        for pos in rng.sample(free_positions, count - 1):
            if self.mixed_objects:
                used = {(o["shape"], o["color"]) for o in objs}
                options = [(s, c) for s in al["shape"] for c in al["color"] if (s, c) not in used]
                if not options:
                    return None
                shape, color = rng.choice(options)
            else:
                shape, color = main["shape"], main["color"]
            objs.append({"shape": shape, "color": color, "size": main["size"], "position": pos, "count": count - 1})
        if not self.only_holdout and any(_matches(c, o) for c in self.holdout for o in objs):
            return None  # a held-out combination: reject and redraw
        return objs

    def scene(self, i: int) -> ShapeScene:
        """The description of sample ``i`` (objects, geometry, captions)."""
        i = self._check_index(i)
        rng = self._rng(i)
        for _ in range(_MAX_TRIES):  # rejection sampling, deterministic given the rng
            attrs = self._draw_attributes(rng)
            if attrs is not None:
                break
        else:  # pragma: no cover - the constructor checks feasibility
            raise RuntimeError(f"could not draw sample {i} satisfying the holdout rules")

        single = len(attrs) == 1
        radii = _SINGLE_RADIUS if single else _MULTI_RADIUS
        quadrant = _SINGLE_QUADRANT if single else _MULTI_QUADRANT
        jitter = _JITTER if single else 0.0
        objects = []
        for a in attrs:
            pos = POSITIONS[a["position"]]
            cx = 0.5 if pos == "centre" else (quadrant if "left" in pos else 1 - quadrant)
            cy = 0.5 if pos == "centre" else (quadrant if "top" in pos else 1 - quadrant)
            cx += rng.uniform(-jitter, jitter)
            cy += rng.uniform(-jitter, jitter)
            j = self.color_jitter
            rgb = tuple(min(255, max(0, ch + rng.randint(-j, j))) for ch in COLOR_RGB[COLORS[a["color"]]])
            objects.append(ShapeObject(a["shape"], a["color"], a["size"], a["position"], cx, cy, radii[a["size"]], rgb))

        if self.textures:
            background = rng.choice(_TEXTURE_BACKGROUNDS)
            noise_seed: int | None = rng.getrandbits(64)
        else:
            background, noise_seed = _BACKGROUND, None

        names = [o.names() for o in objects]
        count_word = COUNTS[len(objects) - 1]
        if single:
            families = _single_captions(names[0])
        elif self.mixed_objects:
            families = _mixed_captions(names, count_word)
        else:
            families = _group_captions(names[0], count_word)
        captions = _pick_captions(rng, *families, n=self.captions_per_image)
        return ShapeScene(tuple(objects), background, noise_seed, tuple(captions))

    def get_sample(self, i: int) -> Sample:
        scene = self.scene(i)
        attributes = scene.attributes()
        return Sample(
            image=render_scene(scene, self.image_size),
            captions=list(scene.captions),
            label=attributes["shape"],
            attributes=attributes,
        )

    def get_captions(self, i: int) -> list[str]:
        return list(self.scene(i).captions)  # no rendering needed

    def get_label(self, i: int) -> int | None:
        return self.scene(i).objects[0].shape

    # -------------------------------------------------------------- zero-shot
    def zero_shot_tasks(self) -> dict[str, ZeroShotTask]:
        tasks = super().zero_shot_tasks()
        # position is learnable but not a headline task; keep the documented order
        order = ["shape", "color", "size", "count", "position"]
        return ZeroShotTasks((k, tasks[k]) for k in order if k in tasks)

    def questions(self, sample_or_scene: Sample | ShapeScene) -> list[tuple[str, str]]:
        """VQA pairs for a sample of this dataset (see :func:`questions`)."""
        return questions(sample_or_scene)

    def __repr__(self) -> str:
        return (
            f"Shapes(split={self.split!r}, size={self.num_samples}, image_size={self.image_size}, "
            f"seed={self.seed}, max_objects={self.max_objects}, mixed_objects={self.mixed_objects}, "
            f"textures={self.textures}, color_jitter={self.color_jitter}, "
            f"captions_per_image={self.captions_per_image}, allowed={self._allowed}, "
            f"holdout={self.holdout}, only_holdout={self.only_holdout})"
        )


# --------------------------------------------------------------------------
# VQA
# --------------------------------------------------------------------------
def questions(sample_or_scene: Sample | ShapeScene) -> list[tuple[str, str]]:
    """(question, answer) pairs about a Shapes image, for VQA-style training
    and evaluation of generative models (e.g. Frozen).

    From a :class:`Sample` the questions are about the main object and the
    object count (what its labels know); from a :class:`ShapeScene` (see
    :meth:`Shapes.scene`) there are also questions about every other object.
    Answers are single class names ("circle", "red", "two", "top left",
    "small", "yes"/"no").  Negative yes/no questions use a deterministic wrong
    colour so the list is reproducible.
    """
    if isinstance(sample_or_scene, ShapeScene):
        attrs = sample_or_scene.attributes()
        others = [o.names() for o in sample_or_scene.objects[1:]]
    else:
        attrs = sample_or_scene.attributes
        others = []
    shape, color = SHAPES[attrs["shape"]], COLORS[attrs["color"]]
    size, position = SIZES[attrs["size"]], POSITIONS[attrs["position"]]
    count = attrs.get("count", 0) + 1
    wrong_color = COLORS[(attrs["color"] + 1) % len(COLORS)]
    if count == 1:
        qa = [
            ("what shape is this?", shape),
            ("what colour is it?", color),
            (f"what colour is the {shape}?", color),
            (f"is the {shape} small or large?", size),
            (f"where is the {shape}?", position),
        ]
    else:
        # several objects: refer to the main one by its position, which is unique
        where = _where(position)
        qa = [
            (f"what shape is {where}?", shape),
            (f"what colour is the {shape} {where}?", color),
            (f"is the {shape} {where} small or large?", size),
        ]
    qa += [
        ("how many objects are there?", COUNTS[count - 1]),
        (f"is there {_np(color, shape)}?", "yes"),
        (f"is the {shape} {wrong_color}?" if count == 1 else f"is the {shape} {_where(position)} {wrong_color}?", "no"),
    ]
    for o in others:
        where = _where(o["position"])
        qa.append((f"what shape is {where}?", o["shape"]))
        qa.append((f"what colour is the {o['shape']} {where}?", o["color"]))
    return qa
