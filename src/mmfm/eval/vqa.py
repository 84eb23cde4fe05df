"""VQAv2 accuracy: the official answer normalisation and the "3 of 10 humans" score.

Normalisation (as the official evaluation script, applied to predictions and human answers alike):
newlines/tabs to spaces; punctuation removed, or turned into a space when it separates words (except
a period inside a number, and commas inside numbers like 1,000 which are dropped); lower case;
number words to digits ("two" -> "2", "none" -> "0"); articles removed; apostrophe-less contractions
restored ("dont" -> "don't").

Score of one prediction against the 10 human answers: for each of the 10 subsets of 9 humans,
min(#humans in the subset who gave the prediction / 3, 1); averaged over the 10 subsets. With fewer
than 10 answers the same leave-one-out average is taken over those given.

One deliberate difference: the official script normalises only when the humans disagree; here
answers are always normalised, so "Two" scores against ten identical "2"s.
"""
from __future__ import annotations

import re
from typing import Sequence

# Number words the official script maps to digits.
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

# Contractions written without their apostrophe(s) -> the standard spelling (the official table's entries;
# its "Im"/"Ive"/"Id've" keys are capitalised and so never match the lower-cased words: left out).
_CONTRACTIONS_SPELLED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd he'd've
he's how'd how'll how's isn't it'd it'd've it'll it's let's ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've she'd she'll she's should've shouldn't
shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll
they're they've 'twas wasn't we'd've we'd we'll we're we've weren't what'll what're what's what've when's where'd
where's where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all
y'all'll y'all'd've you'd you'd've you'll you're you've
"""
CONTRACTIONS: dict[str, str] = {w.replace("'", ""): w for w in _CONTRACTIONS_SPELLED.split()}
# Half-apostrophised forms of double contractions the official table also accepts ("couldnt've").
for _w in list(CONTRACTIONS.values()):
    _parts = _w.split("'")
    if len(_parts) == 3 and _parts[0]:
        CONTRACTIONS[_parts[0] + _parts[1] + "'" + _parts[2]] = _w
        CONTRACTIONS[_parts[0] + "'" + _parts[1] + _parts[2]] = _w

_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")   # the official pattern (its look-behind is a no-op)
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        # Between words a mark becomes a space ("black/white" -> "black white"); next to a space, or
        # anywhere in a text with a digit-comma-digit, it just goes.
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _digits_articles_contractions(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The VQAv2 normalisation of one answer."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles_contractions(_punctuation(text))


def vqa_score(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy of one prediction: leave-one-out mean of min(#matching humans / 3, 1)."""
    if not human_answers:
        raise ValueError("a question needs at least one human answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in human_answers]
    if len(gts) == 1:
        return float(gts[0] == pred)
    matches = sum(g == pred for g in gts)
    total = 0.0
    for g in gts:
        others = matches - (g == pred)   # humans other than the one left out who gave the prediction
        total += min(1.0, others / 3.0)
    return total / len(gts)


def vqa_accuracy(predictions: Sequence[str], human_answers: Sequence[Sequence[str]]) -> float:
    """Mean VQA score over questions (0..1)."""
    if len(predictions) != len(human_answers):
        raise ValueError(f"{len(predictions)} predictions but {len(human_answers)} answer lists")
    if not predictions:
        raise ValueError("no questions to score")
    return sum(vqa_score(p, a) for p, a in zip(predictions, human_answers)) / len(predictions)
