"""The generated demo text: `lexicon` is cached (issue 30 item 5) and its output is unchanged."""

import hashlib
import json
import random

from trainer.tiny import text as t


def _lexicon_written_out(code: str) -> dict[str, str]:
    """The lexicon as it was computed before caching (every call from scratch), written out here."""
    if code == "eng_Latn":
        return {c: c for c in t.CONCEPTS}
    script = code.split("_", 1)[1]
    alphabet = t.SCRIPT_ALPHABETS.get(script, t.SCRIPT_ALPHABETS["Latn"])
    rng = random.Random(f"lexicon:{code}")
    table, used = {}, set()
    for concept in t.CONCEPTS:
        while True:
            words = []
            for _ in concept.split():
                length = rng.randint(1, 2) if script == "Hans" else rng.randint(2, 7)
                words.append("".join(rng.choice(alphabet) for _ in range(length)))
            form = ("" if script == "Hans" else " ").join(words)
            if form not in used:
                used.add(form)
                table[concept] = form
                break
    return table


def test_the_cached_lexicon_equals_a_fresh_computation_and_callers_cannot_change_it():
    for code in t.DEMO_LANGUAGES + ["xyz_Tibt", "jpn_Hans"]:
        assert t.lexicon(code) == _lexicon_written_out(code)
        assert t.lexicon(code) == _lexicon_written_out(code)   # the second call, from the cache
    table = t.lexicon("deu_Latn")
    table["sees"] = "changed"
    del table["buys"]
    assert t.lexicon("deu_Latn") == _lexicon_written_out("deu_Latn")


def test_generated_text_is_byte_identical_to_the_uncached_generator():
    # sha256 of these rows as written by the generator before lexicon() was cached (commit 59e593f);
    # demo_data's files are these functions' rows, one JSON line each.
    h = hashlib.sha256()
    for lang in t.DEMO_LANGUAGES:
        for rows in (t.synthetic_task(lang, 50, 3), t.synthetic_tagging(lang, 50, 3), t.synthetic_qa(lang, 50, 3),
                     t.synthetic_slots(lang, 50, 3), t.synthetic_sentences(lang, 50, 3),
                     t.parallel_sentences(lang, 50, 3), [t.english_documents(5, 2)]):
            for row in rows:
                h.update((json.dumps(row, ensure_ascii=False) + "\n").encode())
    assert h.hexdigest() == "a2caec5b8e27f6ca921003631b54ddba106ffaf534922728461267eb701154b1"
