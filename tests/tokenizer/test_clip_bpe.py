"""mmfm's CLIP tokenizer must produce exactly the ids of ``open_clip.tokenize``."""

from __future__ import annotations

import string
from pathlib import Path

import open_clip  # test dependency: the reference implementation
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfm.tokenizer import CLIPTokenizer, get_tokenizer, tokenize
from mmfm.tokenizer import clip_bpe

REF = open_clip.tokenizer._tokenizer  # open_clip's default SimpleTokenizer

LONG_CAPTION = " ".join(f"word{i} and more words, with punctuation!" for i in range(40))

CORPUS: list[str] = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT.",
    "It's a dog's life; they're here, we've gone, I'm in, you'll see, he'd go",
    "IT'S SHOUTING'LL'VE'RE'D'M'T'S",
    "numbers 0 1 12 123 3.14159 1,000,000 -42 1e10 ½ ² ٣ 五",
    "punctuation!!! ??? ... --- *** @#$%^&*()_+-=[]{}|;:,.<>/?`~\\",
    # HTML entities, single and double escaped, and ftfy-only ones
    "fish &amp; chips",
    "&lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39; &quot;x&quot; &nbsp;",
    "double &amp;amp; escaped &amp;lt;tag&amp;gt;",
    "&EACUTE;COLE &Eacute;cole &hellip; &#x2019; &#8217; &bogus; & alone &",
    "<b>html with &amp; entity</b>",
    "<p>\n&amp; on the next line</p>",
    # whitespace runs, tabs, newlines, CR/LF, unusual spaces
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\nand\rcarriage returns \t\n ",
    "many     spaces\u00a0nbsp\u2003em\u3000ideographic\u2028line\u2029para\x85nel",
    "\x0bvertical\x0cform feed\x1cfile\x1dgroup\x1erecord\x1funit",
    # str.split() whitespace that the word regex would treat as punctuation
    "a!\x1c!b ?\x1f? \x85!",
    # control characters (C0, DEL, C1, terminal escapes, zero-width, bidi)
    "nul\x00bell\x07backspace\x08escape\x1bdel\x7f",
    "\x1b[31mred text\x1b[0m normal",
    "c1 \x80\x81\x8d\x9f controls",
    "zero\u200bwidth\u200cnon\u200djoiner\u2060word\ufeffbom \u202eright-to-left\u202c",
    # accents, composed/decomposed, case-special letters
    "café naïve résumé Ångström façade jalapeño",
    "cafe\u0301 nai\u0308ve (decomposed)",
    "İstanbul ΣΊΣΥΦΟΣ straße ǅemal ﬁnal ﬂower Ǆ",
    # CJK, other scripts, fullwidth / halfwidth
    "日本語のテキスト、中文文本。한국어 텍스트",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ｶﾀｶﾅ",
    "Русский текст, ελληνικά, עברית, العربية, हिन्दी, ไทย",
    # emoji, ZWJ sequences, flags, modifiers, variation selectors
    "emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 🇺🇸🇯🇵 ❤️ ☺︎ 🏴󠁧󠁢󠁷󠁬󠁳󠁿",
    # mojibake that ftfy repairs
    "âœ” No problems",
    "The Mona Lisa doesnâ€™t have eyebrows.",
    "CafÃ© au lait, naÃ¯ve, Ã©tÃ©",
    "&macr;\\_(ã\x83\x84)_/&macr;",
    "voilÃ le travail",
    # literal special tokens, in several contexts
    "<start_of_text>",
    "<END_OF_TEXT> shouted",
    "a<start_of_text>b <<end_of_text>> _<start_of_text> '<end_of_text>",
    "&lt;start_of_text&gt; via entity",
    "<start_of_text><end_of_text><start_of_text>",
    # odd code points
    "private \ue000 use, unassigned \U000e0080, max \U0010ffff, replacement \ufffd",
    "new letters \U00031350\U0002ebf0 \U0001e030 \U00011f00",
    # Letters the Rust regex engine (older Unicode tables) does not classify
    # like the `regex` module; U+0345 case-folds to a letter, so with
    # IGNORECASE the `regex` module matches it with no alternative at all.
    "garay a\U00010940b\U0001094f tulu-tigalari a\U00011380 latin a\ua7cez",
    "ypogegrammeni a\u0345b \u0345 !\u0345!",
    "math 𝐀𝐁𝐂 𝟙𝟚𝟛 ∑∫√∞ ≠ ≤",
    # long strings (truncation)
    LONG_CAPTION,
    "x" * 1000,
    "supercalifragilisticexpialidocious " * 30,
    "😀" * 200,
    "日本" * 200,
    "word " * 75,
    "word " * 76,
    "word " * 77,
]


def _ref_ids(text: str) -> list[int]:
    return REF.encode(text)


@pytest.mark.parametrize("idx", range(len(CORPUS)))
def test_encode_matches_open_clip(idx: int) -> None:
    text = CORPUS[idx]
    assert get_tokenizer().encode(text) == _ref_ids(text)


def test_batch_matches_open_clip() -> None:
    ours = tokenize(CORPUS)
    ref = open_clip.tokenize(CORPUS)
    assert ours.shape == (len(CORPUS), 77)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("ctx", [1, 2, 3, 8, 16, 77, 200])
def test_context_lengths_match_open_clip(ctx: int) -> None:
    ours = tokenize(CORPUS, context_length=ctx)
    assert ours.shape == (len(CORPUS), ctx)
    assert torch.equal(ours, open_clip.tokenize(CORPUS, context_length=ctx))
    # call-time override on an instance with a different default
    assert torch.equal(CLIPTokenizer(context_length=5)(CORPUS, context_length=ctx), ours)


def test_every_ascii_character() -> None:
    """Exercises the ftfy-skipping fast path on each ASCII character in several contexts."""
    texts = []
    for code in range(128):
        c = chr(code)
        texts += [c, f"ab{c}cd", f" {c}{c} 1{c}2 ", f"'{c}s", f"{c}&amp;", f"x{c}\nY"]
    assert torch.equal(tokenize(texts), open_clip.tokenize(texts))


def test_truncation_keeps_end_of_text() -> None:
    tok = get_tokenizer()
    row = tok(LONG_CAPTION)[0]
    assert row[0].item() == tok.sot_token_id
    assert row[-1].item() == tok.eot_token_id
    assert (row != 0).all()
    assert row.tolist()[1:-1] == tok.encode(LONG_CAPTION)[:75]


def test_padding_and_specials() -> None:
    tok = get_tokenizer()
    out = tok(["", "a photo"])
    assert out[0, :2].tolist() == [49406, 49407] and out[0, 2:].eq(0).all()
    assert out[1, :4].tolist() == [49406, *tok.encode("a photo"), 49407]
    assert tok("").shape == (1, 77)
    assert tok([]).shape == (0, 77)
    assert torch.equal(tok(("a photo", "")), out.flip(0))  # any sequence of str


def test_constants() -> None:
    tok = CLIPTokenizer()
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id, tok.context_length) == (
        49408,
        49406,
        49407,
        77,
    )
    assert len(tok.vocab) == 49408 == REF.vocab_size
    assert tok.vocab == REF.encoder
    assert clip_bpe.bytes_to_unicode() == open_clip.tokenizer.bytes_to_unicode()
    # the bundled file is OpenAI's, byte for byte, with its license notice
    assert clip_bpe._BUNDLED_BPE.read_bytes() == Path(open_clip.tokenizer.default_bpe()).read_bytes()
    assert "Copyright (c) 2021 OpenAI" in (clip_bpe._BUNDLED_BPE.parent / "NOTICE").read_text()
    # an explicit path to the same file describes the same vocabulary
    assert CLIPTokenizer(bpe_path=str(clip_bpe._BUNDLED_BPE)).vocab_size == 49408


def test_get_tokenizer_is_cached() -> None:
    assert get_tokenizer() is get_tokenizer(77)
    assert get_tokenizer(16) is get_tokenizer(16)
    assert get_tokenizer(16) is not get_tokenizer()
    assert get_tokenizer(16).context_length == 16


def test_python_fallback_engine_matches() -> None:
    """The pure-Python BPE (used without `tokenizers`) gives the same ids."""
    tok = CLIPTokenizer(use_rust=False)
    assert isinstance(tok._encoder.engine, clip_bpe._PythonBPE)
    assert torch.equal(tok(CORPUS), open_clip.tokenize(CORPUS))


def test_chunk_cache_cold_warm_and_evicting() -> None:
    expected = [_ref_ids(t) for t in CORPUS]
    tok = get_tokenizer()
    tok.clear_cache()
    assert [tok.encode(t) for t in CORPUS] == expected  # cold, one text at a time
    assert tok._encoder.encode_many(CORPUS) == expected  # warm
    # A tiny cache evicts all the time; results must not change.
    tiny = clip_bpe._ChunkEncoder(tok._encoder.engine, cache_size=4)
    assert tiny.encode_many(CORPUS) == expected
    assert tiny.encode_many(CORPUS[::-1]) == expected[::-1]
    assert len(tiny.cache) <= 4
    # The cache key is the lower-cased chunk; case variants share it.
    assert tok.encode("Dog dog DOG") == tok.encode("dog") * 3


def test_concurrent_calls_with_evicting_cache() -> None:
    from concurrent.futures import ThreadPoolExecutor

    texts = CORPUS * 4
    expected = open_clip.tokenize(texts)
    tok = CLIPTokenizer()
    shared = clip_bpe._ChunkEncoder(tok._encoder.engine, cache_size=16)

    def run(offset: int) -> bool:
        order = texts[offset:] + texts[:offset]
        got = tok._pack(shared.encode_many(order), 77)
        return torch.equal(got, torch.cat([expected[offset:], expected[:offset]]))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(0, len(texts), 7)))


def test_decode() -> None:
    tok = get_tokenizer()
    for text in ["a photo of a cat", "café & 日本語 😀 it's 42!"]:
        ids = tok(text)[0]
        assert tok.decode(ids) == " ".join(REF.decode(tok.encode(text)).split())
    assert tok.decode(tok(CORPUS[4])[0]) == "it 's a dog 's life ; they 're here , we 've gone , i 'm in , you 'll see , he 'd go"
    assert tok.decode([]) == ""
    assert tok.decode(torch.tensor([49406, 49407, 0, 0])) == ""
    with pytest.raises(ValueError):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        CLIPTokenizer(context_length=0)
    with pytest.raises(ValueError):
        get_tokenizer()(["x"], context_length=0)
    with pytest.raises(TypeError):
        get_tokenizer()([b"bytes"])  # type: ignore[list-item]


# ---------------------------------------------------------------------------
# Property-based: arbitrary unicode, plus fragments known to trigger clean-up
# ---------------------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    [
        "&amp;", "&lt;", "&gt;", "&#39;", "&#x27;", "&quot;", "&EACUTE;", "&nbsp;", "&", ";",
        "<", ">", "<start_of_text>", "<END_OF_TEXT>", "'s", "'LL", "'", "\r\n", "\r", "\n",
        "\t", " ", "  ", "\x00", "\x0b", "\x0c", "\x1b[1m", "\x7f", "\x85", "\xa0", "Ã©",
        "â€™", "Ã", "©", "ﬁ", "Ｌ", "ｶ", "İ", "Σ", "ς", "😀", "👍🏽", "\u200d", "\u0301", "9",
    ]
)
_ASCII = st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=30)
_LATIN = st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=30)
_TEXTS = st.lists(
    st.one_of(st.text(max_size=30), _ASCII, _LATIN, _FRAGMENTS), max_size=10
).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(_TEXTS, min_size=1, max_size=4), ctx=st.sampled_from([77, 77, 10, 1]))
def test_fuzz_matches_open_clip(texts: list[str], ctx: int) -> None:
    ours = tokenize(texts, context_length=ctx)
    assert ours.shape == (len(texts), ctx)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, open_clip.tokenize(texts, context_length=ctx))


_ENTITY_FRAGMENTS = st.sampled_from(
    ["&amp;", "&lt;", "&gt;", "&#39;", "&#x41;", "&AMP;", "&EACUTE;", "&hellip;", "&nbsp;", "<", ">"]
)


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(
        st.one_of(st.text(alphabet=string.printable + "&<>;#'_", max_size=20), _ENTITY_FRAGMENTS),
        max_size=6,
    ).map("".join)
)
def test_fuzz_fast_path_clean_up_is_irrelevant(text: str) -> None:
    """Where the fast path applies, reference clean-up + split == lower-case, chunk, split."""
    if clip_bpe._fast_path_ok(text):
        findall = clip_bpe._WORD_PATTERN.findall
        chunked = [w for chunk in text.lower().split() for w in findall(chunk)]
        assert chunked == findall(clip_bpe._clean_reference(text))
    assert get_tokenizer().encode(text) == _ref_ids(text)
