"""Text tokenizers.

``tokenize`` / ``CLIPTokenizer`` reproduce OpenAI CLIP's byte-level BPE
(identical ids to ``open_clip.tokenize``), using the bundled vocabulary file so
that no network access is needed.
"""

from mmfm.tokenizer.clip_bpe import CLIPTokenizer, get_tokenizer, tokenize

__all__ = ["CLIPTokenizer", "get_tokenizer", "tokenize"]
