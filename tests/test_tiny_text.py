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


def test_the_generated_multiple_choice_task_reads_as_belebele_and_race_with_translated_questions(tmp_path):
    """The multiple-choice demo task (data/demo/mc): RACE-format English training rows and Belebele-format rows per
    language load through their benchmarks' adapters; four choices, the right one the passage's object (English:
    its words are in the passage, the others' are not); the same seed gives the same answers in every language."""
    from data_prep.demo_data import write_multiple_choice
    from trainer.data.benchmarks import load_benchmark

    write_multiple_choice(tmp_path, ["deu_Latn", "zho_Hans"])
    train = load_benchmark("race", "eng_Latn", "train", files=[str(tmp_path / "train" / "eng_Latn.jsonl")])
    assert len(train) == 400 and len({e.id for e in train}) == 400
    for e in train:
        assert len(e.choices) == 4 and e.choices[e.label] in e.texts[0]
        assert not any(c in e.texts[0] for k, c in enumerate(e.choices) if k != e.label)
    assert {e.label for e in train} == {0, 1, 2, 3}
    test = {lang: load_benchmark("belebele", lang, "test", files=[str(tmp_path / "test" / f"{lang}.jsonl")])
            for lang in ("eng_Latn", "deu_Latn", "zho_Hans")}
    assert [e.label for e in test["deu_Latn"]] == [e.label for e in test["eng_Latn"]] == [e.label for e in test["zho_Hans"]]
    assert len(test["eng_Latn"]) == 100 and all(e.choices[e.label] in e.texts[0] for e in test["deu_Latn"])
    assert [e.texts for e in test["eng_Latn"]] != [e.texts for e in train[:100]]   # another seed
