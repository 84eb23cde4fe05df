"""Pretrained identifiers -> local files: parsing, download, cache, and failing fast offline.

Accepted forms of ``pretrained``:

* a local path: a weights file or a checkpoint directory (always tried first);
* ``hf-hub:ORG/NAME[@REVISION]``: a Hugging Face repo holding either an HF ``CLIPModel``
  (config.json + weights) or an open_clip model (open_clip_config.json + open_clip weights);
* a tag such as ``openai`` or ``laion2b_s34b_b79k`` together with a model name, or the shorthand
  ``TAG/MODEL`` / ``MODEL/TAG`` (``openai/ViT-B-32``). Tags are looked up in open_clip's pretrained
  registry, which is imported lazily, only here: mmfm itself never needs open_clip;
* ``ORG/NAME`` that is not a tag/model pair is taken as a Hugging Face repo id.

Offline (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, ``MMFM_OFFLINE=1``) or when the network
cannot be reached, only what is already cached is used; otherwise a ``CheckpointError`` is raised at
once, naming the identifier and how to pass a local file instead. There is no fallback to random weights.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .validate import CheckpointError

HF_PREFIX = "hf-hub:"
OPENCLIP_CONFIG = "open_clip_config.json"
OPENCLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HF_SHARDS = {"model.safetensors.index.json": "model-*.safetensors", "pytorch_model.bin.index.json": "pytorch_model-*.bin"}
_PATH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".json")
PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


@dataclass
class Resolved:
    """Where a pretrained identifier's files are, plus what its registry entry says about them."""

    path: Path
    identifier: str
    quick_gelu: bool | None = None   # from open_clip's pretrained registry, when the identifier was a tag


def default_cache_dir() -> Path:
    return Path(os.environ.get("MMFM_CACHE", "~/.cache/mmfm")).expanduser()


def is_offline() -> bool:
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MMFM_OFFLINE")):
        return True
    try:  # huggingface_hub reads HF_HUB_OFFLINE once, at import
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _fail_offline(identifier: str, reason: str, model_name: str | None = None) -> CheckpointError:
    name = f"{model_name!r}, " if model_name else ""
    return CheckpointError(
        f"cannot fetch pretrained weights {identifier!r}: {reason}, and they are not in the local cache. "
        "mmfm never falls back to random weights. Download the checkpoint where there is network access and pass "
        f"its local path instead, e.g. create_model({name}pretrained='/path/to/open_clip_model.safetensors') "
        "or pretrained='/path/to/hf_clip_model_dir'.")


def _require_network(url: str, identifier: str, model_name: str | None) -> None:
    reason = unreachable(url)
    if reason is not None:
        raise _fail_offline(identifier, reason, model_name)


def unreachable(url: str) -> str | None:
    """Why ``url``'s host (or the configured proxy) cannot be reached now, or None if it answers.

    At most PROBE_TIMEOUT_S: resolution and connection run in a daemon thread because ``getaddrinfo``
    ignores socket timeouts. Offline mode (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE/MMFM_OFFLINE) counts as
    unreachable without probing. The reason is a phrase for callers' own messages.
    """
    if is_offline():
        return "offline mode is on (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE/MMFM_OFFLINE)"
    parsed = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parsed.scheme or "https")
    target = urllib.parse.urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else parsed
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    result: list[BaseException | None] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - reported below
            result.append(e)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    if not result or result[0] is not None:
        why = f"{type(result[0]).__name__}: {result[0]}" if result else f"no answer within {PROBE_TIMEOUT_S:.0f} s"
        return f"the network is unreachable ({host}:{port}: {why})"
    return None


def hf_hub_unreachable() -> str | None:
    """Why the Hugging Face Hub (its configured endpoint) cannot be reached now, or None if it answers."""
    return unreachable(_hf_endpoint())


# ------------------------------------------------------------------------------------------
# Hugging Face Hub
def _hf_endpoint() -> str:
    try:
        from huggingface_hub import constants
        return constants.ENDPOINT
    except Exception:
        return "https://huggingface.co"


def _hf_layout(files: set[str]) -> list[str] | None:
    """The files to fetch from a repo listing: open_clip layout first, then HF CLIPModel layout."""
    if OPENCLIP_CONFIG in files:
        weights = next((w for w in OPENCLIP_WEIGHTS if w in files), None)
        if weights:
            return [OPENCLIP_CONFIG, weights]
    if "config.json" in files:
        weights = next((w for w in HF_WEIGHTS if w in files), None)
        if weights:
            return ["config.json", weights] + ([_HF_SHARDS[weights]] if weights in _HF_SHARDS else [])
    return None


def _local_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def resolve_hf_repo(repo_id: str, revision: str | None, cache_dir: str | None, identifier: str,
                    model_name: str | None = None) -> Path:
    """A local snapshot folder of an HF repo with a config and weights (cached copy preferred)."""
    from huggingface_hub import HfApi, snapshot_download
    patterns = [OPENCLIP_CONFIG, *OPENCLIP_WEIGHTS, "config.json", *HF_WEIGHTS, *_HF_SHARDS.values()]
    try:
        cached = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                        allow_patterns=patterns))
        if _hf_layout(_local_files(cached)):
            return cached
    except Exception:
        pass  # not cached (or incompletely): download below
    _require_network(_hf_endpoint(), identifier, model_name)
    try:
        files = set(HfApi().list_repo_files(repo_id, revision=revision))
    except Exception as e:
        raise CheckpointError(f"cannot list Hugging Face repo {repo_id!r} for {identifier!r}: {type(e).__name__}: {e}") from e
    wanted = _hf_layout(files)
    if wanted is None:
        raise CheckpointError(f"Hugging Face repo {repo_id!r} holds neither an open_clip model ({OPENCLIP_CONFIG} + "
                              f"{' or '.join(OPENCLIP_WEIGHTS)}) nor an HF CLIPModel (config.json + {' or '.join(HF_WEIGHTS)})")
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=wanted))
    except Exception as e:
        raise CheckpointError(f"downloading {identifier!r} failed: {type(e).__name__}: {e}") from e


def _hf_file(repo_id: str, candidates: list[str], cache_dir: str | None, identifier: str, model_name: str | None) -> Path:
    """The first of ``candidates`` that a repo has, from the cache if possible."""
    from huggingface_hub import hf_hub_download
    for name in candidates:
        try:
            return Path(hf_hub_download(repo_id, name, cache_dir=cache_dir, local_files_only=True))
        except Exception:
            continue
    _require_network(_hf_endpoint(), identifier, model_name)
    errors = []
    for name in candidates:
        try:
            return Path(hf_hub_download(repo_id, name, cache_dir=cache_dir))
        except Exception as e:
            errors.append(f"{name}: {type(e).__name__}")
    raise CheckpointError(f"cannot download {identifier!r} from Hugging Face repo {repo_id!r} ({'; '.join(errors)})")


# ------------------------------------------------------------------------------------------
# Plain URLs (OpenAI's releases)
def _expected_sha256(url: str) -> str:
    parts = urllib.parse.urlsplit(url).path.split("/")
    if "openaipublic" in url and len(parts) >= 2:
        return parts[-2]                                 # .../models/<sha256>/ViT-B-32.pt
    if "mlfoundations" in url:
        return Path(parts[-1]).stem.split("-")[-1]       # ...-<sha256 prefix>.pt
    return ""


def _sha256_ok(path: Path, expected: str) -> bool:
    if not expected:
        return True
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest().startswith(expected)


def download_url(url: str, cache_dir: str | None, identifier: str, model_name: str | None = None) -> Path:
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = cache / Path(urllib.parse.urlsplit(url).path).name
    expected = _expected_sha256(url)
    if target.is_file() and _sha256_ok(target, expected):
        return target
    _require_network(url, identifier, model_name)
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if not _sha256_ok(Path(tmp), expected):
            raise CheckpointError(f"{url}: downloaded file does not match its SHA-256 {expected}")
        os.replace(tmp, target)
    except CheckpointError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except Exception as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"downloading {identifier!r} from {url} failed: {type(e).__name__}: {e}") from e
    return target


# ------------------------------------------------------------------------------------------
# open_clip's pretrained registry
def _open_clip():
    try:
        import open_clip
        return open_clip
    except ImportError:
        return None


def _registry_entry(oc, model: str, tag: str) -> dict:
    cfg = oc.get_pretrained_cfg(model, tag)
    if not cfg and model.endswith("-quickgelu"):   # OpenAI's tags live under the plain names
        cfg = oc.get_pretrained_cfg(model[: -len("-quickgelu")], tag)
    return cfg or {}


def resolve_tag(model: str, tag: str, cache_dir: str | None, identifier: str) -> Resolved:
    oc = _open_clip()
    if oc is None:
        raise CheckpointError(f"pretrained tag {identifier!r} is looked up in open_clip's registry, but open_clip is not "
                              "installed (pip install open_clip_torch); or pass a local path or an hf-hub: id")
    entry = _registry_entry(oc, model, tag)
    if not entry:
        tags = oc.list_pretrained_tags_by_model(model) or oc.list_pretrained_tags_by_model(model.removesuffix("-quickgelu"))
        if tags:
            known = f"known tags for {model}: {tags}"
        else:
            others = oc.list_pretrained_models_by_tag(tag)
            known = f"{model!r} has no pretrained weights in open_clip's registry" + \
                (f" (models with tag {tag!r}: {others})" if others else "")
        raise CheckpointError(f"unknown pretrained identifier {identifier!r}; {known}. {_FORMS}")
    if entry.get("hf_hub"):
        # "org/name/" means open_clip's default file names; "org/name/file.bin" names the file.
        repo_id, filename = posixpath.split(entry["hf_hub"].strip())
        if not filename:
            candidates = list(OPENCLIP_WEIGHTS)
        elif filename.endswith((".bin", ".pth", ".pt")):
            candidates = [posixpath.splitext(filename)[0] + ".safetensors", filename]   # prefer safetensors
        else:
            candidates = [filename]
        path = _hf_file(repo_id, candidates, cache_dir, identifier, model)
    elif entry.get("url"):
        path = download_url(entry["url"], cache_dir, identifier, model)
    else:
        raise CheckpointError(f"open_clip's registry has no download location for {identifier!r}")
    return Resolved(path, identifier, quick_gelu=bool(entry.get("quick_gelu", False)))


_FORMS = ("Accepted: a local file or directory, 'hf-hub:ORG/NAME', or a tag such as 'openai' with a model name "
          "(create_model('ViT-B-32', pretrained='laion2b_s34b_b79k') or pretrained='openai/ViT-B-32').")


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~", ".\\")) or s.lower().endswith(_PATH_SUFFIXES) or s.count("/") > 1 \
        or os.sep != "/" and os.sep in s


def resolve(pretrained: str | os.PathLike, model_name: str | None = None, cache_dir: str | None = None) -> Resolved:
    """Turn any accepted ``pretrained`` value into local files (downloading when needed and allowed)."""
    identifier = os.fspath(pretrained)
    local = Path(identifier).expanduser()
    if local.exists():
        return Resolved(local, identifier)
    if identifier.startswith(HF_PREFIX):
        repo, _, revision = identifier[len(HF_PREFIX):].strip("/").partition("@")
        if repo.count("/") != 1:
            raise CheckpointError(f"{identifier!r}: expected hf-hub:ORG/NAME[@REVISION]")
        return Resolved(resolve_hf_repo(repo, revision or None, cache_dir, identifier, model_name), identifier)
    if _looks_like_path(identifier):
        raise CheckpointError(f"checkpoint {identifier!r} does not exist (no such file or directory)")
    if "/" in identifier:
        a, b = identifier.split("/")
        oc = _open_clip()
        if oc is not None:
            for model, tag in ((b, a), (a, b)):   # openai/ViT-B-32 or ViT-B-32/openai
                if _registry_entry(oc, model, tag):
                    return resolve_tag(model, tag, cache_dir, identifier)
        return Resolved(resolve_hf_repo(a + "/" + b, None, cache_dir, identifier, model_name), identifier)
    if model_name is None:
        raise CheckpointError(f"pretrained {identifier!r} is neither an existing path nor an identifier that names its "
                              f"model; a tag needs a model name, e.g. create_model('ViT-B-32', pretrained={identifier!r}). "
                              + _FORMS)
    return resolve_tag(model_name, identifier, cache_dir, identifier)
