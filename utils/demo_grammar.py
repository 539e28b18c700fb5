"""A small English grammar over the demo corpus's 300 most frequent words.

The quick start's sentences used to be random orders of words, which a word n-gram language model
cannot predict: beam search with an LM then only adds a lexicon. The sentences drawn here have
structure -- subject, verb and object agree, determiners precede nouns, prepositions take noun
phrases -- so that an n-gram LM estimated on the training transcripts learns something the
acoustic model does not know, as it does on real speech. Every word is one of the 300 most
frequent words of ``utils/demo_words.txt`` (``tests/test_demo_corpus.py`` checks it).

The grammar is a dictionary from upper-case symbols to their alternatives; an alternative is a
space-separated sequence of symbols and lower-case words, and alternatives are drawn uniformly
(an alternative listed twice is twice as likely). ``sentence(rng)`` expands ``S`` and writes "a"
as "an" before a vowel.
"""

from __future__ import annotations

import numpy as np

# fmt: off
GRAMMAR: dict[str, list[str]] = {
    "S": ["CLAUSE", "CLAUSE", "CLAUSE", "CLAUSE", "QUESTION", "COMMAND", "CLAUSE and CLAUSE",
          "CLAUSE but CLAUSE", "i think that CLAUSE", "i think CLAUSE", "SUBJ said that CLAUSE",
          "SUBJ_PL know that CLAUSE"],
    "CLAUSE": [
        "SUBJ_PL VT NP", "SUBJ_PL VT NP PP", "SUBJ_PL PRE_ADV VT NP",
        "SUBJ MODAL VT NP", "SUBJ MODAL PRE_ADV VT NP PP", "SUBJ MODAL VI", "SUBJ MODAL VI PP",
        "SUBJ VT_PAST NP", "SUBJ VT_PAST NP PP", "NP VT_PAST NP", "NP VT_PAST NP PP",
        "SUBJ VI_PAST PP", "NP VI_PAST PP", "SUBJ VI_PAST home", "SUBJ VI_PAST back TIME",
        "NP_SG is DEGREE ADJ", "NP_SG was ADJ", "NP_PL are DEGREE ADJ", "NP_PL were ADJ TIME",
        "NP_SG is the best NOUN_SG PP", "there is NP_SG PP", "there are NP_PL PP",
        "there was NP_SG PP TIME", "SUBJ_PL have PP_VERB NP", "SUBJ_PL have never PP_VERB NP",
        "SUBJ_3 has PP_VERB NP", "SUBJ_PL want to VT NP", "SUBJ_PL need to VT NP PP",
        "SUBJ_PL don't VT NP", "SUBJ_3 doesn't VT NP", "SUBJ didn't VT NP", "SUBJ can't VI PP",
    ],
    "QUESTION": [
        "what do you think about NP", "how can we VT NP", "why did NP VT NP",
        "where is NP_SG", "where are NP_PL", "when will you VI", "who VT_PAST NP",
        "do you VT NP", "did you VT NP PP", "can you VT NP", "what did you VT TIME",
        "how many NOUN_PL VT_PAST NP", "is there NP_SG PP",
    ],
    "COMMAND": [
        "please VT NP", "please VT NP PP", "let me know", "let us VI", "don't VT NP",
        "VT NP PP", "please tell OBJ_PERSON about NP", "let me VT NP",
    ],
    "SUBJ": ["SUBJ_PL", "SUBJ_3"],
    "SUBJ_PL": ["i", "you", "we", "they", "people", "NP_PL"],
    "SUBJ_3": ["he", "she", "it", "NP_SG"],
    "NP": ["NP_SG", "NP_SG", "NP_PL", "NP_MASS", "OBJ_PERSON", "NP_SG of NP_SG", "a lot of NOUN_PL",
           "a lot of NP_MASS"],
    "NP_SG": ["DET_SG NOUN_SG", "DET_SG NOUN_SG", "DET_SG ADJ NOUN_SG", "the same NOUN_SG",
              "the first NOUN_SG", "the next NOUN_SG", "the last NOUN_SG", "POSS own NOUN_SG"],
    "NP_PL": ["DET_PL NOUN_PL", "DET_PL ADJ NOUN_PL", "people", "all the NOUN_PL", "NUMBER NOUN_PL",
              "other NOUN_PL", "most NOUN_PL"],
    "NP_MASS": ["money", "water", "music", "power", "work", "love", "support", "time",
                "POSS money", "the water", "the music"],
    "OBJ_PERSON": ["me", "him", "her", "them", "us", "you", "POSS family"],
    "PP": ["PREP NP_SG", "PREP NP_SG", "PREP NP_PL", "PREP NP_MASS", "TIME"],
    "PREP": ["in", "on", "with", "at", "for", "from", "by", "about", "after", "before", "during",
             "over", "under", "through", "around", "without", "against", "into"],
    "TIME": ["today", "now", "again", "this year", "this week", "last night", "every day",
             "last year", "next week", "at night"],
    "DET_SG": ["the", "the", "a", "a", "this", "that", "every", "each", "another", "one", "POSS",
               "no", "any"],
    "DET_PL": ["the", "the", "these", "those", "some", "many", "all", "POSS", "NUMBER", "no"],
    "POSS": ["my", "your", "his", "her", "our", "their"],
    "NUMBER": ["two", "three", "four"],
    "NOUN_SG": ["time", "way", "year", "day", "life", "world", "man", "home", "game", "thing",
                "house", "place", "school", "end", "team", "family", "number", "city", "name",
                "night", "company", "case", "person", "point", "job", "side", "line", "order",
                "party", "group", "system", "week", "business", "state", "head", "part", "change",
                "government"],
    "NOUN_PL": ["people", "years", "days", "things", "women", "men", "times", "states"],
    "ADJ": ["good", "new", "great", "big", "little", "old", "high", "long", "real", "small",
            "white", "free", "hard", "bad", "full", "public", "national", "american",
            "different"],
    "DEGREE": ["", "very", "really", "still", "always", "not", "so", "too", "never"],
    "PRE_ADV": ["really", "never", "always", "still", "just", "also", "even", "actually"],
    "MODAL": ["can", "will", "would", "could", "should", "may", "might", "must"],
    "VT": ["make", "take", "find", "see", "get", "want", "need", "love", "help", "keep",
                "like", "use", "know", "call", "change", "run", "start", "support", "show", "play",
                "read", "tell", "give", "stop", "believe", "have", "do"],
    "VT_PAST": ["made", "took", "found", "got", "used", "called", "told", "had", "did", "left",
                "set", "put", "read", "thought about", "came to", "went to"],
    "PP_VERB": ["done", "seen", "made", "found", "got", "been to", "used", "called", "told", "had",
                "left", "read"],
    "VI": ["go", "come", "work", "play", "live", "stop", "run", "start", "help", "go home",
           "come back"],
    "VI_PAST": ["went", "came", "left"],
}
# fmt: on

_VOWELS = frozenset("aeio")  # "a use", "a united": no English word here needs "an" before u


def expand(symbol: str, rng: np.random.Generator) -> list[str]:
    """Words of one random expansion of ``symbol``."""
    alternatives = GRAMMAR[symbol]
    words: list[str] = []
    for token in alternatives[int(rng.integers(len(alternatives)))].split():
        words += expand(token, rng) if token.isupper() or "_" in token else [token]
    return words


def sentence(rng: np.random.Generator) -> str:
    """One sentence of the grammar, lower case, words separated by single spaces."""
    words = expand("S", rng)
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][0] in _VOWELS:
            words[i] = "an"
    return " ".join(words)


def vocabulary() -> set[str]:
    """Every word the grammar can produce."""
    words = set()
    for alternatives in GRAMMAR.values():
        for alternative in alternatives:
            words.update(t for t in alternative.split() if not (t.isupper() or "_" in t))
    return words | {"an"}
