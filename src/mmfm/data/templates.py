"""Class names and prompt templates of the standard zero-shot benchmarks.

These are the lists of the CLIP paper's prompt engineering (OpenAI's ``data/prompts.md``, also shipped
by clip_benchmark), so zero-shot numbers are comparable with published ones. Every template contains
one ``"{}"`` for the class name. Class lists are in *label order*: entry ``i`` names the class whose
label is ``i`` in the dataset's official layout (as torchvision reads it), which for EuroSAT is not
the order of CLIP's prompt file; there we map folder names to CLIP's names explicitly.
"""
from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Templates
CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)

FOOD101_TEMPLATES: tuple[str, ...] = ("a photo of {}, a type of food.",)

FLOWERS102_TEMPLATES: tuple[str, ...] = ("a photo of a {}, a type of flower.",)

DTD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {} texture.",
    "a photo of a {} pattern.",
    "a photo of a {} thing.",
    "a photo of a {} object.",
    "a photo of the {} texture.",
    "a photo of the {} pattern.",
    "a photo of the {} thing.",
    "a photo of the {} object.",
)

EUROSAT_TEMPLATES: tuple[str, ...] = (
    "a centered satellite photo of {}.",
    "a centered satellite photo of a {}.",
    "a centered satellite photo of the {}.",
)

#: The single template CLIP uses when nothing better is known.
SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

# ---------------------------------------------------------------------------------------------
# Class names
CIFAR10_CLASSNAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# CIFAR-100's fine labels in label order (alphabetical), underscores replaced by spaces.
CIFAR100_CLASSNAMES: tuple[str, ...] = (
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
)

FOOD101_CLASSNAMES: tuple[str, ...] = (
    "apple pie", "baby back ribs", "baklava", "beef carpaccio", "beef tartare", "beet salad", "beignets",
    "bibimbap", "bread pudding", "breakfast burrito", "bruschetta", "caesar salad", "cannoli", "caprese salad",
    "carrot cake", "ceviche", "cheese plate", "cheesecake", "chicken curry", "chicken quesadilla",
    "chicken wings", "chocolate cake", "chocolate mousse", "churros", "clam chowder", "club sandwich",
    "crab cakes", "creme brulee", "croque madame", "cup cakes", "deviled eggs", "donuts", "dumplings",
    "edamame", "eggs benedict", "escargots", "falafel", "filet mignon", "fish and chips", "foie gras",
    "french fries", "french onion soup", "french toast", "fried calamari", "fried rice", "frozen yogurt",
    "garlic bread", "gnocchi", "greek salad", "grilled cheese sandwich", "grilled salmon", "guacamole",
    "gyoza", "hamburger", "hot and sour soup", "hot dog", "huevos rancheros", "hummus", "ice cream",
    "lasagna", "lobster bisque", "lobster roll sandwich", "macaroni and cheese", "macarons", "miso soup",
    "mussels", "nachos", "omelette", "onion rings", "oysters", "pad thai", "paella", "pancakes",
    "panna cotta", "peking duck", "pho", "pizza", "pork chop", "poutine", "prime rib",
    "pulled pork sandwich", "ramen", "ravioli", "red velvet cake", "risotto", "samosa", "sashimi",
    "scallops", "seaweed salad", "shrimp and grits", "spaghetti bolognese", "spaghetti carbonara",
    "spring rolls", "steak", "strawberry shortcake", "sushi", "tacos", "takoyaki", "tiramisu",
    "tuna tartare", "waffles",
)

# Oxford Flowers-102 in label order (imagelabels.mat label 1 -> index 0).
FLOWERS102_CLASSNAMES: tuple[str, ...] = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon",
    "colt's foot", "king protea", "spear thistle", "yellow iris", "globe flower", "purple coneflower",
    "peruvian lily", "balloon flower", "giant white arum lily", "fire lily", "pincushion flower",
    "fritillary", "red ginger", "grape hyacinth", "corn poppy", "prince of wales feathers",
    "stemless gentian", "artichoke", "sweet william", "carnation", "garden phlox", "love in the mist",
    "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower", "great masterwort",
    "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion",
    "petunia", "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura",
    "geranium", "orange dahlia", "pink and yellow dahlia", "cautleya spicata", "japanese anemone",
    "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose",
    "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani",
    "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia", "cyclamen",
    "watercress", "canna lily", "hippeastrum", "bee balm", "air plant", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper",
    "blackberry lily",
)

# DTD's 47 categories (the folder names, which are already plain words).
DTD_CLASSNAMES: tuple[str, ...] = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked",
    "crosshatched", "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid",
    "grooved", "honeycombed", "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed",
    "paisley", "perforated", "pitted", "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared",
    "spiralled", "sprinkled", "stained", "stratified", "striped", "studded", "swirly", "veined", "waffled",
    "woven", "wrinkled", "zigzagged",
)

# EuroSAT folder name -> the descriptive name CLIP prompts with (folder names are CamelCase codes).
EUROSAT_FOLDER_TO_CLASSNAME: dict[str, str] = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}
# Label order = sorted folder names (torchvision's ImageFolder order).
EUROSAT_CLASSNAMES: tuple[str, ...] = tuple(EUROSAT_FOLDER_TO_CLASSNAME[k] for k in sorted(EUROSAT_FOLDER_TO_CLASSNAME))

# ---------------------------------------------------------------------------------------------
CLASSNAMES: dict[str, tuple[str, ...]] = {
    "cifar10": CIFAR10_CLASSNAMES,
    "cifar100": CIFAR100_CLASSNAMES,
    "food101": FOOD101_CLASSNAMES,
    "flowers102": FLOWERS102_CLASSNAMES,
    "dtd": DTD_CLASSNAMES,
    "eurosat": EUROSAT_CLASSNAMES,
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "cifar10": CIFAR_TEMPLATES,
    "cifar100": CIFAR_TEMPLATES,
    "food101": FOOD101_TEMPLATES,
    "flowers102": FLOWERS102_TEMPLATES,
    "dtd": DTD_TEMPLATES,
    "eurosat": EUROSAT_TEMPLATES,
}


# ---------------------------------------------------------------------------------------------
# clip_benchmark's protocol (open_clip's published tables). Its template lists for these six benchmarks are
# the ones above, and so are its Flowers-102 / EuroSAT names; CIFAR-10, Food-101 (underscores spaced) and DTD
# come from torchvision and match too. Only CIFAR-100 differs: clip_benchmark prompts with torchvision's raw
# names, underscores kept ("aquarium_fish", "maple_tree", ... 9 classes).
PROTOCOLS: tuple[str, ...] = ("clip_paper", "clip_benchmark")
CLIP_BENCHMARK_CLASSNAMES: dict[str, tuple[str, ...]] = {
    "cifar100": tuple(n.replace(" ", "_") for n in CIFAR100_CLASSNAMES),
}


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")


def get_templates(dataset: str, protocol: str = "clip_paper") -> list[str]:
    """The prompt templates for a benchmark (``SIMPLE_TEMPLATES`` for an unknown name); both protocols
    use the same lists for the built-in benchmarks."""
    _check_protocol(protocol)
    return list(TEMPLATES.get(dataset.lower(), SIMPLE_TEMPLATES))


def get_classnames(dataset: str, protocol: str = "clip_paper") -> list[str]:
    """The class names a protocol prompts a benchmark with, in label order."""
    _check_protocol(protocol)
    if protocol == "clip_benchmark" and dataset.lower() in CLIP_BENCHMARK_CLASSNAMES:
        return list(CLIP_BENCHMARK_CLASSNAMES[dataset.lower()])
    try:
        return list(CLASSNAMES[dataset.lower()])
    except KeyError:
        raise KeyError(f"no built-in class names for {dataset!r}; known: {sorted(CLASSNAMES)}") from None


def prettify_classname(raw: str) -> str:
    """A folder/label id as words: ``"apple_pie" -> "apple pie"`` (how CLIP names Food-101/CIFAR-100 classes)."""
    return raw.replace("_", " ").strip()
