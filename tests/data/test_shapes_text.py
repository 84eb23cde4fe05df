"""Text about shapes scenes (the Frozen experiment's LM corpus): text only, new words bound at random."""
from __future__ import annotations

from mmfm.data.shapes_text import binding_text, nonsense_words, text_corpus


def test_text_corpus_is_text_only_and_binds_words_at_random():
    from mmfm.data import Shapes
    ds = Shapes("train", size=200)
    words = nonsense_words(8)
    docs = text_corpus(ds, 200, words, seed=0, mix={"binding": 1.0})
    assert all(isinstance(d, str) and "This is a" in d and "Q: What is this? A:" in d for d in docs)
    first_words = {d.split("This is a ")[1].split(".")[0] for d in docs}
    assert first_words <= set(words) and len(first_words) > 2
    assert binding_text(["red circle", "blue star"], ["dax", "wug"], ["green circle"], ["dax"]) == \
        "red circle This is a dax. blue star This is a wug. green circle Q: What is this? A: dax"


def test_direct_binding_template_puts_the_word_after_the_thing_and_ends_on_the_query():
    import pytest
    from mmfm.data import Shapes
    from mmfm.frozen.tasks import binding_episodes, binding_prompt
    assert binding_text(["red circle", "blue star"], ["dax", "wug"], ["green circle", "pink star"], ["dax", "wug"],
                        template="direct") == "red circle dax. blue star wug. green circle dax pink star wug"
    ds = Shapes("train", size=200)
    docs = text_corpus(ds, 50, nonsense_words(8), seed=0, mix={"binding": 1.0}, template="direct")
    assert not any("This is a" in d or "Q:" in d for d in docs)
    with pytest.raises(ValueError, match="unknown binding template 'fancy'"):
        text_corpus(ds, 5, nonsense_words(8), mix={"binding": 1.0}, template="fancy")
    episode = binding_episodes(ds, 1)[0]
    prompt = binding_prompt(ds, episode, template="direct")
    assert prompt[1] == f"{episode['words'][0]}." and prompt[3] == f"{episode['words'][1]}."
    assert len(prompt) == 5 and not isinstance(prompt[-1], str)          # ends on the query image
    text_prompt = binding_prompt(ds, episode, as_text=True, template="paper")
    assert text_prompt[-1] == "Q: What is this? A:" and text_prompt[1] == f"This is a {episode['words'][0]}."


def test_shapes_text_dataset_is_the_corpus_of_its_scenes_and_covers_their_words():
    from mmfm.data import Shapes, get_dataset
    from mmfm.data.shapes_text import vocabulary_texts
    d = get_dataset("shapes_text", documents=30, size=100, seed=3, template="direct")
    scenes = Shapes("train", size=100, seed=3)
    words = nonsense_words(48, include=("dax", "blicket"))
    assert d.texts == text_corpus(scenes, 30, words, seed=3, template="direct")
    assert d.vocabulary == vocabulary_texts(scenes, words) and len(d) == 30 and d[0] == d.texts[0]
