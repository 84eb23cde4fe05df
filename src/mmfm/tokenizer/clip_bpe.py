"""OpenAI CLIP byte-level BPE tokenizer, id-for-id compatible with ``open_clip.tokenize``.

The reference behaviour (OpenAI CLIP / open_clip ``SimpleTokenizer``) is:

1. clean-up: ``ftfy.fix_text`` -> ``html.unescape`` twice -> ``strip`` -> collapse
   whitespace runs (``" ".join(text.split())``) -> lower-case;
2. split into words with the regex in :data:`_WORD_PATTERN` (whitespace is
   dropped because no alternative matches it);
3. map each word's UTF-8 bytes to printable unicode stand-ins (GPT-2 style
   byte-level table), mark the final symbol with ``</w>`` and apply the BPE
   merges of the bundled vocabulary;
4. wrap in ``<start_of_text>`` / ``<end_of_text>``, truncate to the context
   length keeping ``<end_of_text>`` as the last token, pad with zeros.

This module reproduces that exactly, but faster:

* ``ftfy.fix_text`` is by far the most expensive step. It is skipped for text
  where it provably cannot change the ids (see :data:`_NOT_FAST_CLEAN`).
* The cleaned text is cut at whitespace into *chunks*.  No alternative of the
  word regex can match whitespace, so the words of a text are exactly the
  words of its chunks, in order, and a chunk's ids depend on the chunk alone.
  Captions reuse a small set of chunks ("a", "photo", "of", "beach,"), so ids
  are memoised per chunk; a batch costs little more than ``lower().split()``
  and a dict look-up per chunk.
* Chunks not yet cached are split with the same ``regex`` pattern open_clip
  uses and the words are BPE-encoded in one multi-threaded batch by Hugging
  Face ``tokenizers`` (a BPE model built from the very same vocabulary and
  merges, fed pre-split words, so it only does byte mapping + merges).  The
  split stays in Python on purpose: Oniguruma (the Rust engine's regex) and
  the ``regex`` module ship different Unicode tables, and thousands of code
  points (recent scripts, U+0345...) are classified differently.
* If ``tokenizers`` is not importable, a pure-Python BPE is used instead; it
  gives the same ids, only cache misses are slower.
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch

try:  # the fast BPE engine; everything still works (cold caches slower) without it
    import tokenizers as _hf
    from tokenizers import models as _hf_models
    from tokenizers import pre_tokenizers as _hf_pre
except ImportError:  # pragma: no cover - exercised only without the dependency
    _hf = None

__all__ = ["CLIPTokenizer", "get_tokenizer", "tokenize", "DEFAULT_CONTEXT_LENGTH"]

DEFAULT_CONTEXT_LENGTH = 77

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"

_BUNDLED_BPE = Path(__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz"

# Line 0 of the vocabulary file is a version header; the CLIP vocabulary uses
# the first 49152 - 256 - 2 merges (48894 lines), so that
# 256 bytes + 256 bytes with '</w>' + 48894 merges + 2 specials = 49408 tokens.
_NUM_MERGES = 49152 - 256 - 2

# Word-splitting pattern of OpenAI CLIP.  Special tokens come first so that a
# literal "<start_of_text>" in the text is kept whole when the scan reaches it
# (but not inside a punctuation run such as "<<start_of_text>").
_WORD_PATTERN = regex.compile(
    SOT_TOKEN
    + "|"
    + EOT_TOKEN
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)

# Raw text free of these characters can skip ftfy + html.unescape:
#   * ftfy's mojibake, C1, ligature, width, quote, surrogate and NFC fixes only
#     act on non-ASCII characters;
#   * ftfy's terminal-escape and control-character removal need ASCII control
#     characters (ESC, NUL.., VT, DEL...), which are excluded here: only TAB,
#     LF and CR are allowed, and ftfy merely rewrites CR/CRLF to LF, which is
#     whitespace either way;
#   * both ftfy's own entity decoding and html.unescape need '&', excluded.
# What remains of the clean-up (strip, whitespace collapse) does not change
# the chunks returned by str.split().  Lower-casing still has to be applied.
# (\x1c-\x1f, whitespace to str.split() but not to the word regex, are
# excluded too, so str.split() is exact on these texts.)
_NOT_FAST_CLEAN = re.compile(r"[^\t\n\r\x20-\x25\x27-\x7e]")

# Memoised chunks per vocabulary: FIFO-evicted beyond this many entries, and
# chunks longer than _MAX_CACHED_CHUNK (URLs, "xxxxxxxx...") are not stored,
# since they rarely repeat.  100k entries take roughly 30 MB (~320 B each).
CHUNK_CACHE_SIZE = 100_000
_MAX_CACHED_CHUNK = 64


# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte 0..255 to a printable unicode character.

    Bytes that are already printable, non-space Latin-1 characters map to
    themselves; the remaining 68 bytes (controls, space, NBSP, soft hyphen,
    ...) map to U+0100 onwards in byte order.  The dict is ordered by the
    CLIP vocabulary order: the printable bytes first, then the others.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    table = {b: chr(b) for b in printable}
    others = (b for b in range(256) if b not in table)
    for offset, b in enumerate(others):
        table[b] = chr(256 + offset)
    return table


@functools.lru_cache(maxsize=None)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


@functools.lru_cache(maxsize=4)
def _load_vocab(bpe_path: str) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Read the merges file and build the token -> id map the way CLIP does."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1])
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + END_OF_WORD for c in byte_chars]
    tokens += ["".join(pair) for pair in merges]
    tokens += [SOT_TOKEN, EOT_TOKEN]
    # dict(zip(...)) semantics: should a string repeat, its last id wins,
    # exactly as in the reference implementation.
    vocab = dict(zip(tokens, range(len(tokens))))
    return vocab, merges  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Clean-up
# ---------------------------------------------------------------------------


def _clean_reference(text: str) -> str:
    """The full open_clip clean-up ('lower' mode), step for step."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = " ".join(text.strip().split())
    return text.lower()


def _fast_path_ok(text: str) -> bool:
    """True if ftfy/html clean-up provably cannot change the ids of ``text``."""
    return _NOT_FAST_CLEAN.search(text) is None


# ---------------------------------------------------------------------------
# BPE engines: list of words -> ids
# ---------------------------------------------------------------------------


class _PythonBPE:
    """Byte-level BPE in pure Python (fallback when ``tokenizers`` is absent).

    Merging repeatedly joins the lowest-ranked adjacent pair (all of its
    non-overlapping occurrences, left to right) until no known pair remains.
    """

    _WORD_CACHE_SIZE = 50_000

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]):
        self.vocab = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_table = bytes_to_unicode()
        # Per-word memo: the chunk cache above this engine misses on every new
        # chunk ("dog," after "dog"), but their words repeat.
        self.word_cache: dict[str, list[int]] = {}

    def _merge(self, symbols: list[str]) -> list[str]:
        ranks = self.ranks
        while len(symbols) > 1:
            best_rank, best = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def word_ids(self, word: str) -> list[int]:
        ids = self.word_cache.get(word)
        if ids is not None:
            return ids
        if word in (SOT_TOKEN, EOT_TOKEN):
            ids = [self.vocab[word]]
        else:
            symbols = [self.byte_table[b] for b in word.encode("utf-8")]
            symbols[-1] += END_OF_WORD
            ids = [self.vocab[s] for s in self._merge(symbols)]
        if len(self.word_cache) >= self._WORD_CACHE_SIZE:
            self.word_cache.clear()  # crude bound; this engine is only a fallback
        self.word_cache[word] = ids
        return ids

    def encode_words(self, batch: list[list[str]]) -> list[list[int]]:
        return [[i for word in words for i in self.word_ids(word)] for words in batch]

    def clear_cache(self) -> None:
        self.word_cache.clear()


class _RustBPE:
    """Hugging Face ``tokenizers`` BPE over words that are already split.

    The tokenizer knows the two special tokens, so a word that *is*
    "<start_of_text>" maps to its id instead of being BPE'd (words produced
    by the CLIP regex never merely contain a special token: those mix letters
    and punctuation, which no other alternative does).
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]):
        self.model = _hf_models.BPE(
            vocab=vocab,
            merges=list(merges),
            end_of_word_suffix=END_OF_WORD,
            cache_capacity=100_000,
        )
        self.tok = _hf.Tokenizer(self.model)
        # ByteLevel without its own GPT-2 regex and without a prefix space does
        # exactly "UTF-8 bytes -> printable stand-in characters" per word.
        self.tok.pre_tokenizer = _hf_pre.ByteLevel(add_prefix_space=False, use_regex=False)
        self.tok.add_special_tokens(
            [_hf.AddedToken(t, special=True, normalized=False) for t in (SOT_TOKEN, EOT_TOKEN)]
        )
        # encode_batch_fast skips offset tracking; older versions lack it.
        self._encode_batch = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)

    def encode_words(self, batch: list[list[str]]) -> list[list[int]]:
        encodings = self._encode_batch(batch, is_pretokenized=True, add_special_tokens=False)
        return [e.ids for e in encodings]

    def clear_cache(self) -> None:
        clear = getattr(self.model, "_clear_cache", None)
        if clear is not None:
            clear()


class _ChunkEncoder:
    """Text -> BPE ids via a memo of whitespace-delimited chunks (shared per vocabulary)."""

    def __init__(self, engine: _RustBPE | _PythonBPE, cache_size: int = CHUNK_CACHE_SIZE):
        self.engine = engine
        self.cache_size = cache_size
        self.cache: dict[str, list[int]] = {}
        self._write_lock = threading.Lock()  # readers go lock-free

    def _encode_chunks(self, chunks: list[str]) -> dict[str, list[int]]:
        """Encode chunks missing from the cache (one engine batch) and memoise them."""
        word_lists = [_WORD_PATTERN.findall(chunk) for chunk in chunks]
        # A chunk can yield no word (e.g. U+0345, which no alternative matches
        # under IGNORECASE); the engine is only asked about non-empty ones.
        todo = [i for i, words in enumerate(word_lists) if words]
        encoded = self.engine.encode_words([word_lists[i] for i in todo]) if todo else []
        result: dict[str, list[int]] = {chunk: [] for chunk in chunks}
        for i, ids in zip(todo, encoded):
            result[chunks[i]] = ids
        self._store(result)
        return result

    def _store(self, new: dict[str, list[int]]) -> None:
        if self.cache_size <= 0:
            return
        with self._write_lock:
            cache = self.cache
            overflow = len(cache) + len(new) - self.cache_size
            if overflow > 0:
                # Dicts keep insertion order: drop the oldest entries, plus
                # some slack so that eviction does not run on every batch.
                n_drop = min(len(cache), overflow + self.cache_size // 8)
                for key in list(itertools.islice(cache, n_drop)):
                    del cache[key]
            for chunk, ids in itertools.islice(new.items(), self.cache_size):
                if len(chunk) <= _MAX_CACHED_CHUNK:
                    cache[chunk] = ids

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        needs_ftfy = _NOT_FAST_CLEAN.search
        try:
            # The hot loop.  For most captions lower() is the whole clean-up
            # (see _NOT_FAST_CLEAN); split() cuts the text into chunks.
            chunked = [
                (t.lower() if needs_ftfy(t) is None else _clean_reference(t)).split()
                for t in texts
            ]
        except (TypeError, AttributeError):
            for t in texts:
                if not isinstance(t, str):
                    raise TypeError(f"expected str, got {type(t).__name__}") from None
            raise

        cache = self.cache
        missing = set(itertools.chain.from_iterable(chunked)).difference(cache)
        fresh = self._encode_chunks(list(missing)) if missing else {}

        lookup = cache.__getitem__
        out: list[list[int]] = []
        for chunks in chunked:
            ids: list[int] = []
            try:
                for chunk in chunks:  # (a plain loop beats chain/map here)
                    ids += lookup(chunk)
            except KeyError:  # a chunk too long to cache, or evicted meanwhile
                ids = self._assemble(chunks, fresh)
            out.append(ids)
        return out

    def _assemble(self, chunks: list[str], fresh: dict[str, list[int]]) -> list[int]:
        ids: list[int] = []
        for chunk in chunks:
            part = self.cache.get(chunk)
            if part is None:
                part = fresh.get(chunk)
                if part is None:  # evicted by a concurrent call meanwhile
                    part = self._encode_chunks([chunk])[chunk]
            ids += part
        return ids

    def clear_cache(self) -> None:
        with self._write_lock:
            self.cache.clear()
        self.engine.clear_cache()


@functools.lru_cache(maxsize=4)
def _get_encoder(bpe_path: str, use_rust: bool = True) -> _ChunkEncoder:
    vocab, merges = _load_vocab(bpe_path)
    if use_rust and _hf is not None:
        return _ChunkEncoder(_RustBPE(vocab, merges))
    return _ChunkEncoder(_PythonBPE(vocab, merges))


# ---------------------------------------------------------------------------
# Public tokenizer
# ---------------------------------------------------------------------------


class CLIPTokenizer:
    """OpenAI CLIP tokenizer returning the same ids as ``open_clip.tokenize``.

    Construction is cheap; the vocabulary and BPE engine are loaded on first
    use and shared (with the chunk cache) by all instances using the same
    vocabulary file.  ``use_rust=False`` forces the pure-Python BPE engine.
    """

    vocab_size: int = 49408
    sot_token_id: int = 49406
    eot_token_id: int = 49407
    pad_token_id: int = 0

    def __init__(
        self,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        bpe_path: str | None = None,
        *,
        use_rust: bool = True,
    ):
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        self.context_length = int(context_length)
        self.bpe_path = str(bpe_path) if bpe_path is not None else str(_BUNDLED_BPE)
        self.use_rust = use_rust
        self._decoder: dict[int, str] | None = None
        if bpe_path is not None:
            # A custom file may differ in size/special ids; read it now so the
            # attributes describe it (the bundled file's values are the defaults).
            vocab, _ = _load_vocab(self.bpe_path)
            self.vocab_size = len(vocab)
            self.sot_token_id = vocab[SOT_TOKEN]
            self.eot_token_id = vocab[EOT_TOKEN]

    @property
    def _encoder(self) -> _ChunkEncoder:
        return _get_encoder(self.bpe_path, self.use_rust)  # built once, then a cache hit

    @property
    def vocab(self) -> dict[str, int]:
        return _load_vocab(self.bpe_path)[0]

    def clear_cache(self) -> None:
        """Forget memoised chunks and BPE results (e.g. for cold-start benchmarks)."""
        self._encoder.clear_cache()

    # -- encoding -----------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` (cleaned and lower-cased), without start/end tokens."""
        return self._encoder.encode_many([text])[0]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.LongTensor:
        """Tokenize to a ``[N, context_length]`` int64 tensor.

        Each row is ``<start_of_text> ids... <end_of_text>`` followed by zeros.
        Rows that do not fit are cut to ``context_length`` tokens and the last
        one is replaced by ``<end_of_text>``.
        """
        if isinstance(texts, str):
            texts = [texts]
        ctx = self.context_length if context_length is None else int(context_length)
        if ctx < 1:
            raise ValueError(f"context_length must be >= 1, got {ctx}")
        return self._pack(self._encoder.encode_many(texts), ctx)

    def _pack(self, all_ids: list[list[int]], ctx: int) -> torch.LongTensor:
        n = len(all_ids)
        out = np.zeros((n, ctx), dtype=np.int64)
        if n == 0:
            return torch.from_numpy(out)
        if ctx == 1:
            # [sot, ..., eot] cut to one token, whose value then becomes eot.
            out[:, 0] = self.eot_token_id
            return torch.from_numpy(out)

        room = ctx - 2  # slots between the start and end tokens
        kept = [ids if len(ids) <= room else ids[:room] for ids in all_ids]
        lengths = np.fromiter(map(len, kept), dtype=np.int64, count=n)
        flat = np.fromiter(
            itertools.chain.from_iterable(kept), dtype=np.int64, count=int(lengths.sum())
        )
        # Body tokens occupy columns 1..length of each row; boolean-mask
        # assignment fills them in row-major order, matching `flat`.
        cols = np.arange(ctx)
        out[(cols >= 1) & (cols <= lengths[:, None])] = flat
        out[:, 0] = self.sot_token_id
        out[np.arange(n), lengths + 1] = self.eot_token_id
        return torch.from_numpy(out)

    # -- decoding -----------------------------------------------------------

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> str:
        """Text for a 1-D sequence of ids.

        Special tokens are skipped and trailing zeros are treated as padding
        (id 0 is '!' without '</w>', which can never be a sequence's last real
        token, because every word ends in a '</w>' token).  '</w>' becomes a
        space; the trailing space of the last word is removed.
        """
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(f"decode expects a 1-D sequence, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        while ids and ids[-1] == self.pad_token_id:
            ids.pop()
        if self._decoder is None:
            self._decoder = {i: s for s, i in self.vocab.items()}
        byte_of = _unicode_to_bytes()
        specials = {self.sot_token_id, self.eot_token_id}
        chars = "".join(self._decoder[i] for i in ids if i not in specials)
        # Split on '</w>' before mapping back to bytes: its characters are
        # not byte stand-ins here.
        words = [
            bytes(byte_of[c] for c in piece).decode("utf-8", errors="replace")
            for piece in chars.split(END_OF_WORD)
        ]
        return " ".join(words).rstrip(" ")

    def __repr__(self) -> str:
        engine = "rust" if self.use_rust and _hf is not None else "python"
        return (
            f"{type(self).__name__}(context_length={self.context_length}, "
            f"vocab_size={self.vocab_size}, engine={engine})"
        )


_SHARED: dict[int, CLIPTokenizer] = {}
_SHARED_LOCK = threading.Lock()


def get_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> CLIPTokenizer:
    """Shared tokenizer instance for ``context_length`` (bundled vocabulary)."""
    # A dict keyed by the int (not lru_cache, which keys on how the argument
    # was passed) so that get_tokenizer() and get_tokenizer(77) are one object.
    key = int(context_length)
    tok = _SHARED.get(key)
    if tok is None:
        with _SHARED_LOCK:
            tok = _SHARED.get(key)
            if tok is None:
                tok = _SHARED[key] = CLIPTokenizer(context_length=key)
    return tok


def tokenize(
    texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH
) -> torch.LongTensor:
    """Drop-in equivalent of ``open_clip.tokenize``: ``[N, context_length]`` int64 ids."""
    return get_tokenizer(context_length)(texts)
