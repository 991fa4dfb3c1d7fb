"""Generated multilingual text for tests and demos (no downloads).

Each language gets a deterministic lexicon of pseudo-words written in its own
script, one word per concept; a sentence is a sequence of concepts drawn from
a few templates. Rendering the same concept sequence in two languages gives a
translation pair with word-level correspondence, which is what contrastive
alignment needs to have something to learn. English uses real words so that
demo output is readable.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

# Concept inventory: English surface forms double as concept ids.
SUBJECTS = ["the farmer", "a child", "the teacher", "my sister", "the doctor", "our neighbour",
            "the old man", "a student", "the baker", "the singer", "her brother", "the pilot"]
VERBS = ["sees", "buys", "carries", "paints", "finds", "sells", "cooks", "reads", "builds",
         "loves", "washes", "opens"]
OBJECTS = ["a red apple", "the small house", "an old book", "the blue boat", "a warm bread",
           "the green door", "a long letter", "the heavy box", "a bright lamp", "the white horse",
           "a new chair", "the wooden table"]
PLACES = ["in the market", "near the river", "at school", "in the garden", "on the hill",
          "in the city", "by the sea", "at home"]
TIMES = ["today", "every morning", "in the evening", "last week", "on sunday", "at night"]

CONCEPTS = SUBJECTS + VERBS + OBJECTS + PLACES + TIMES

# Alphabets used to spell pseudo-words, by ISO 15924-style script name.
SCRIPT_ALPHABETS = {
    "Latn": "abcdefghijklmnopqrstuvwxyzäöüéèñç",
    "Grek": "αβγδεζηθικλμνξοπρστυφχψω",
    "Cyrl": "абвгдежзийклмнопрстуфхцчшыэюя",
    "Arab": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "Hans": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可",
    "Deva": "कखगघचछजझटठडढणतथदधनपफबभमयरलवशसह",
    "Ethi": "ሀለሐመሠረሰሸቀበተቸኀነኘአከኸወዐዘዠየደጀገጠጨጰጸፀፈፐ",
    "Hebr": "אבגדהוזחטיכלמנסעפצקרשת",
    "Thai": "กขคฆงจฉชซฌญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรลวศษสหฬอฮ",
}

DEMO_LANGUAGES = ["eng_Latn", "deu_Latn", "fra_Latn", "ell_Grek", "rus_Cyrl", "arb_Arab",
                  "zho_Hans", "hin_Deva", "amh_Ethi", "swh_Latn"]


def script_of(flores_code: str) -> str:
    """The script part of a FLORES-200 code (`ell_Grek` -> `Grek`)."""
    try:
        return flores_code.split("_", 1)[1]
    except IndexError:
        raise ValueError(f"not a FLORES-200 code (expected xxx_Script): {flores_code!r}") from None


def lexicon(flores_code: str) -> dict[str, str]:
    """Concept -> pseudo-word in the language's script; English maps to itself.

    Deterministic in the language code, so every process builds the same table. The table is built
    once per language and cached (rendering calls this for every sentence); each call returns a fresh
    copy, so a caller may change its dict without changing the cache.
    """
    return dict(_lexicon_table(flores_code))


@functools.lru_cache(maxsize=None)
def _lexicon_table(flores_code: str) -> dict[str, str]:
    """`lexicon`'s table, built once per language code (never handed out: `lexicon` copies it)."""
    if flores_code == "eng_Latn":
        return {c: c for c in CONCEPTS}
    alphabet = SCRIPT_ALPHABETS.get(script_of(flores_code), SCRIPT_ALPHABETS["Latn"])
    rng = random.Random(f"lexicon:{flores_code}")
    table: dict[str, str] = {}
    used: set[str] = set()
    cjk = script_of(flores_code) == "Hans"
    for concept in CONCEPTS:
        while True:
            words = []
            for _ in concept.split():
                length = rng.randint(1, 2) if cjk else rng.randint(2, 7)
                words.append("".join(rng.choice(alphabet) for _ in range(length)))
            form = ("" if cjk else " ").join(words)
            if form not in used:
                used.add(form)
                table[concept] = form
                break
    return table


def concept_sentences(n: int, seed: int) -> list[list[str]]:
    """`n` sentences as concept sequences (subject verb object [place] [time])."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        s = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
        if rng.random() < 0.6:
            s.append(rng.choice(PLACES))
        if rng.random() < 0.5:
            s.append(rng.choice(TIMES))
        sentences.append(s)
    return sentences


def render(concepts: list[str], flores_code: str) -> str:
    """Write a concept sequence as a sentence of the given language."""
    table = lexicon(flores_code)
    words = [table[c] for c in concepts]
    if script_of(flores_code) == "Hans":
        return "".join(words) + "。"
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def sentences(flores_code: str, n: int, seed: int = 0) -> list[str]:
    """`n` generated sentences in one language."""
    return [render(c, flores_code) for c in concept_sentences(n, seed)]


def parallel_sentences(flores_code: str, n: int, seed: int = 0,
                       source: str = "eng_Latn") -> list[tuple[str, str]]:
    """`n` translation pairs (source sentence, target sentence)."""
    return [(render(c, source), render(c, flores_code)) for c in concept_sentences(n, seed)]


def english_documents(n: int, seed: int = 0, min_sentences: int = 1,
                      max_sentences: int = 4) -> list[str]:
    """`n` English documents of a few generated sentences each."""
    rng = random.Random(f"docs:{seed}")
    docs = []
    for i in range(n):
        k = rng.randint(min_sentences, max_sentences)
        docs.append(" ".join(sentences("eng_Latn", k, seed=seed * 1_000_003 + i)))
    return docs


# --- the generated task (align/realign demos and tests) ------------------------------------------

VERB_CLASSES = {
    0: ["sees", "finds", "reads", "loves"],
    1: ["buys", "sells", "carries", "opens"],
    2: ["paints", "cooks", "builds", "washes"],
}
LABEL_OF_VERB = {verb: label for label, verbs in VERB_CLASSES.items() for verb in verbs}


def synthetic_task(lang: str, n: int, seed: int) -> list[dict]:
    """`n` examples {"text", "label"} in `lang`; the same seed gives translations across languages."""
    rows = []
    for concepts in concept_sentences(n, seed):
        rows.append({"text": render(concepts, lang), "label": LABEL_OF_VERB[concepts[1]]})
    return rows


def write_task_files(out_dir: str | Path, languages: list[str], n: int, seed: int) -> dict[str, Path]:
    """Write `{lang}.jsonl` for each language; returns lang -> path."""
    return _write_per_language(out_dir, languages, lambda lang: synthetic_task(lang, n, seed))


def _write_per_language(out_dir: str | Path, languages: list[str], rows) -> dict[str, Path]:
    """`rows(lang)` as `out_dir/{lang}.jsonl` for each language; returns lang -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for lang in languages:
        path = out / f"{lang}.jsonl"
        with path.open("w") as f:
            for row in rows(lang):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[lang] = path
    return paths


# --- the generated tagging task (topic_tags) and QA task (topic_qa) ------------------------------

CONCEPT_ROLES = {**{c: "SUBJ" for c in SUBJECTS}, **{c: "VERB" for c in VERBS}, **{c: "OBJ" for c in OBJECTS},
                 **{c: "PLACE" for c in PLACES}, **{c: "TIME" for c in TIMES}}


def concept_words(concept: str, flores_code: str) -> list[str]:
    """A concept's words in a language: its pseudo-words (one per English word); Chinese-like scripts write a
    concept as one word (no spaces)."""
    form = lexicon(flores_code)[concept]
    return [form] if script_of(flores_code) == "Hans" else form.split(" ")


def synthetic_tagging(lang: str, n: int, seed: int) -> list[dict]:
    """`n` sentences {"id", "tokens", "tags"} in `lang`: each word tagged with its concept's role (SUBJ, VERB, OBJ,
    PLACE, TIME) in IOB2 (`B-` on a concept's first word), the final full stop `O`. The same seed gives the
    same sentences, word for word, in every language: a cross-lingual tagging task."""
    stop = "。" if script_of(lang) == "Hans" else "."
    rows = []
    for i, concepts in enumerate(concept_sentences(n, seed)):
        words, tags = [], []
        for concept in concepts:
            parts = concept_words(concept, lang)
            words += parts
            tags += [f"B-{CONCEPT_ROLES[concept]}"] + [f"I-{CONCEPT_ROLES[concept]}"] * (len(parts) - 1)
        rows.append({"id": str(i), "tokens": words + [stop], "tags": tags + ["O"]})
    return rows


def synthetic_qa(lang: str, n: int, seed: int, sentences_per_context: int = 4) -> list[dict]:
    """`n` extractive QA examples in the SQuAD layout ({"id", "title", "context", "question", "answers": {"text",
    "answer_start"}}) in `lang`: a context of a few sentences with distinct verbs, the question one sentence's
    subject and verb ("the farmer sees?"), the answer that sentence's object. (The answer follows what
    identifies it, so a causal LLM can find it too.)"""
    rng = random.Random(f"qa:{seed}")
    join = "" if script_of(lang) == "Hans" else " "
    words = lambda concepts: join.join(w for c in concepts for w in concept_words(c, lang))  # noqa: E731
    rows = []
    for i in range(n):
        verbs = rng.sample(VERBS, sentences_per_context)
        contexts = [[rng.choice(SUBJECTS), verb, rng.choice(OBJECTS)] for verb in verbs]
        texts = [render(concepts, lang) for concepts in contexts]
        asked = rng.randrange(sentences_per_context)
        start = sum(len(t) + len(join) for t in texts[:asked]) + len(words(contexts[asked][:2])) + len(join)
        question = words(contexts[asked][:2]) + ("？" if join == "" else "?")
        rows.append({"id": f"{seed}-{i}", "title": "", "context": join.join(texts), "question": question,
                     "answers": {"text": [words(contexts[asked][2:])], "answer_start": [start]}})
    return rows


def write_tagging_files(out_dir: str | Path, languages: list[str], n: int, seed: int) -> dict[str, Path]:
    """`synthetic_tagging` as `{lang}.jsonl` per language (the `topic_tags` benchmark's files)."""
    return _write_per_language(out_dir, languages, lambda lang: synthetic_tagging(lang, n, seed))


def write_qa_files(out_dir: str | Path, languages: list[str], n: int, seed: int) -> dict[str, Path]:
    """`synthetic_qa` as `{lang}.jsonl` per language (the `topic_qa` benchmark's files)."""
    return _write_per_language(out_dir, languages, lambda lang: synthetic_qa(lang, n, seed))


# --- the generated generative tasks (topic_slots, topic_mt; M2) ------------------------------------------

SLOT_TYPES = {"SUBJ": "person", "OBJ": "object", "PLACE": "place", "TIME": "time"}   # concept role -> slot type


def synthetic_slots(lang: str, n: int, seed: int) -> list[dict]:
    """`n` utterances in MASSIVE's format ({"id", "locale", "utt", "annot_utt", "intent"}) in `lang`: the
    subject, object, place and time concepts are slots (`[person : the farmer] sees [object : a red apple]`),
    the verb is not; the intent is the verb's topic class. Lower case, no final stop, as MASSIVE's utterances;
    Chinese-like scripts write the words without spaces (the annotation keeps spaces around brackets, as
    MASSIVE's zh-CN does). The same seed gives translations across languages."""
    join = "" if script_of(lang) == "Hans" else " "
    rows = []
    for i, concepts in enumerate(concept_sentences(n, seed)):
        plain, annotated = [], []
        for concept in concepts:
            words = join.join(concept_words(concept, lang))
            plain.append(words)
            slot = SLOT_TYPES.get(CONCEPT_ROLES[concept])
            annotated.append(f"[{slot} : {words}]" if slot else words)
        rows.append({"id": str(i), "locale": lang, "utt": join.join(plain), "annot_utt": " ".join(annotated),
                     "intent": LABEL_OF_VERB[concepts[1]]})
    return rows


def synthetic_sentences(lang: str, n: int, seed: int) -> list[dict]:
    """`n` sentences in FLORES+'s layout ({"id", "text"}) in `lang`; sentence `id` k translates sentence k of every
    other language with the same seed (multi-way parallel, as FLORES)."""
    return [{"id": i, "text": render(concepts, lang)} for i, concepts in enumerate(concept_sentences(n, seed))]


def write_slot_files(out_dir: str | Path, languages: list[str], n: int, seed: int) -> dict[str, Path]:
    """`synthetic_slots` as `{lang}.jsonl` per language (the `topic_slots` benchmark's files)."""
    return _write_per_language(out_dir, languages, lambda lang: synthetic_slots(lang, n, seed))


def write_sentence_files(out_dir: str | Path, languages: list[str], n: int, seed: int) -> dict[str, Path]:
    """`synthetic_sentences` as `{lang}.jsonl` per language (the `topic_mt` benchmark's files)."""
    return _write_per_language(out_dir, languages, lambda lang: synthetic_sentences(lang, n, seed))


# --- the generated multiple-choice task (Belebele's format; RACE's for English training) ------------------

MC_CHOICES = 4


def _mc_questions(lang: str, n: int, seed: int) -> list[tuple[str, str, list[str], int]]:
    """`n` (passage, question, choices, answer index) in `lang`: the passage one generated sentence, the question
    its subject and verb ("The farmer sees?"), the choices four objects, the right one the passage's own. The
    distractors and the answer's position depend on the seed only: the same seed gives translations."""
    rng = random.Random(f"mc:{seed}")
    join = "" if script_of(lang) == "Hans" else " "
    mark = "？" if join == "" else "?"
    rows = []
    for concepts in concept_sentences(n, seed):
        wrong = rng.sample([o for o in OBJECTS if o != concepts[2]], MC_CHOICES - 1)
        answer = rng.randrange(MC_CHOICES)
        options = wrong[:answer] + [concepts[2]] + wrong[answer:]
        question = join.join(w for c in concepts[:2] for w in concept_words(c, lang))
        rows.append((render(concepts, lang), question[0].upper() + question[1:] + mark,
                     [join.join(concept_words(o, lang)) for o in options], answer))
    return rows


def synthetic_belebele(lang: str, n: int, seed: int) -> list[dict]:
    """`n` multiple-choice questions in Belebele's columns ({"link", "question_number", "flores_passage",
    "question", "mc_answer1".."mc_answer4", "correct_answer_num" "1".."4"}) in `lang` (see `_mc_questions`)."""
    return [{"link": f"mc-{seed}-{i}", "question_number": 1, "flores_passage": passage, "question": question,
             **{f"mc_answer{k + 1}": choice for k, choice in enumerate(choices)}, "correct_answer_num": str(answer + 1)}
            for i, (passage, question, choices, answer) in enumerate(_mc_questions(lang, n, seed))]


def synthetic_race(lang: str, n: int, seed: int) -> list[dict]:
    """The same questions in RACE's columns ({"example_id", "article", "question", "options", "answer" "A".."D"}):
    the study trains Belebele's model on RACE (English)."""
    return [{"example_id": f"mc-{seed}-{i}", "article": passage, "question": question, "options": choices,
             "answer": "ABCD"[answer]}
            for i, (passage, question, choices, answer) in enumerate(_mc_questions(lang, n, seed))]


def write_belebele_files(out_dir: str | Path, languages: list[str], n: int, seed: int) -> dict[str, Path]:
    """`synthetic_belebele` as `{lang}.jsonl` per language (read by the `belebele` benchmark)."""
    return _write_per_language(out_dir, languages, lambda lang: synthetic_belebele(lang, n, seed))


def write_race_files(out_dir: str | Path, languages: list[str], n: int, seed: int) -> dict[str, Path]:
    """`synthetic_race` as `{lang}.jsonl` per language (read by the `race` benchmark)."""
    return _write_per_language(out_dir, languages, lambda lang: synthetic_race(lang, n, seed))
