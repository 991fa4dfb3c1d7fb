"""M2's generative tasks: MASSIVE and FLORES adapters on fixtures in their real formats, the generated demo
versions, the study's prompts, greedy decoding through `AlignedModel`'s generate mode, and the metrics
(MASSIVE's slot F1, sacrebleu BLEU and chrF) against hand-worked examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.config import ConfigError, validate
from trainer.data.benchmarks import load_benchmark
from trainer.data.prompts import SLOT_FILLING_SYSTEM, ChatPrompts, GenerativeCollator
from trainer.data.slots import annotated_words, slot_answer
from trainer.data.translation_pairs import translation_examples
from trainer.errors import DataError
from trainer.eval import generation_metrics as gm
from trainer.eval.metrics import f1_from_counts
from trainer.tiny.text import write_sentence_files, write_slot_files

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "benchmarks"


# --- adapters ------------------------------------------------------------------------------------------------

def test_massive_fixture_gives_the_study_answer_words_and_slots():
    first, silent, song = load_benchmark("massive", "en-US", "test", files=[str(FIXTURES / "massive_en-US_test.jsonl")])
    assert first.language == "eng_Latn" and first.id == "massive/eng_Latn/test/1"
    assert first.texts == ("wake me up at five am this week",)
    assert first.target == "time: five am; date: this week"
    assert first.words == ("wake", "me", "up", "at", "five", "am", "this", "week")
    assert first.word_slots == ("Other",) * 4 + ("time", "time", "date", "date")
    assert silent.target == "None" and set(silent.word_slots) == {"Other"}
    assert song.target == "song_name: hello; artist_name: adele"
    # the FLORES code names the locale too
    assert load_benchmark("massive", "eng_Latn", "test", files=[str(FIXTURES / "massive_en-US_test.jsonl")])[0] == first


def test_massive_chinese_is_split_by_character_as_the_release_does():
    clock, song = load_benchmark("massive", "zh-CN", "test", files=[str(FIXTURES / "massive_zh-CN_test.jsonl")])
    assert clock.language == "zho_Hans" and clock.target == "date: 明天; time: 早上五点"
    assert clock.words == tuple("明天早上五点叫醒我")
    assert clock.word_slots == ("date", "date", "time", "time", "time", "time", "Other", "Other", "Other")
    # ASCII chunks stay whole and (as in MASSIVE's create_hf_dataset.py) do not close their slot: 的 keeps artist_name
    assert song.words == ("播", "放", "adele", "的", "hello")
    assert song.word_slots == ("Other", "Other", "artist_name", "artist_name", "song_name")


def test_slot_answer_and_words_of_an_annotation():
    assert slot_answer("set an alarm for [time : two hours from now]") == "time: two hours from now"
    assert slot_answer("olly quiet") == "None"
    words, slots = annotated_words("book [place_name : st. louis] hotel", by_character=False)
    assert words == ("book", "st.", "louis", "hotel") and slots == ("Other", "place_name", "place_name", "Other")


def test_flores_fixtures_join_into_both_directions():
    template = str(FIXTURES / "flores_plus_{language}_devtest.jsonl")
    pairs = translation_examples("flores", ["deu_Latn"], "eng_Latn", ["to_pivot", "from_pivot"], "test", template)
    assert sorted(pairs) == ["deu_Latn-eng_Latn", "eng_Latn-deu_Latn"]
    to_english = pairs["deu_Latn-eng_Latn"][1]
    assert to_english.language == "deu_Latn" and to_english.target_language == "eng_Latn"
    assert to_english.texts[0].startswith("Leitende Forscher") and to_english.target.startswith("Lead researchers")
    from_english = pairs["eng_Latn-deu_Latn"][0]
    assert from_english.texts[0].startswith("On Monday") and from_english.target.startswith("Am Montag")
    assert from_english.id == "flores/eng_Latn-deu_Latn/test/1"
    # the FLORES-200 release's plain files: one sentence a line, the line number as id (the same ids)
    plain = load_benchmark("flores", "deu_Latn", "test", files=[str(FIXTURES / "flores200_deu_Latn.devtest")])
    jsonl = load_benchmark("flores", "deu_Latn", "test", files=[template.format(language="deu_Latn")])
    assert [(e.id, e.texts) for e in plain] == [(e.id, e.texts) for e in jsonl]


def test_sentences_that_are_not_parallel_are_refused(tmp_path):
    (tmp_path / "eng_Latn.jsonl").write_text('{"id": 1, "text": "a"}\n')
    (tmp_path / "deu_Latn.jsonl").write_text('{"id": 7, "text": "b"}\n')
    with pytest.raises(DataError, match="7.*no eng_Latn sentence"):
        translation_examples("flores", ["deu_Latn"], "eng_Latn", ["to_pivot"], "test", str(tmp_path / "{language}.jsonl"))


def test_generated_demo_tasks_load_through_their_adapters(tmp_path):
    write_slot_files(tmp_path / "slots", ["eng_Latn", "zho_Hans"], 5, seed=0)
    write_sentence_files(tmp_path / "mt", ["eng_Latn", "ell_Grek"], 5, seed=0)
    english = load_benchmark("topic_slots", "eng_Latn", "train", files=[str(tmp_path / "slots" / "eng_Latn.jsonl")])
    chinese = load_benchmark("topic_slots", "zho_Hans", "train", files=[str(tmp_path / "slots" / "zho_Hans.jsonl")])
    for e in english:
        assert e.target.startswith("person: ") and "object: " in e.target
        assert len(e.words) == len(e.word_slots) == len(e.texts[0].split())
    assert all(len(e.words) == len(e.texts[0]) for e in chinese)   # by character, no spaces
    assert [e.target.split(";")[0].split(": ")[0] for e in chinese] == ["person"] * 5
    pairs = translation_examples("topic_mt", ["ell_Grek"], "eng_Latn", ["from_pivot"], "train",
                                 str(tmp_path / "mt" / "{language}.jsonl"))
    assert [e.texts[0] for e in pairs["eng_Latn-ell_Grek"]] == [
        e.texts[0] for e in load_benchmark("topic_mt", "eng_Latn", "train", files=[str(tmp_path / "mt/eng_Latn.jsonl")])]


# --- metrics -------------------------------------------------------------------------------------------------

WORDS = ("wake", "me", "up", "at", "five", "am", "this", "week")
GOLD = ("Other",) * 4 + ("time", "time", "date", "date")      # entities: time 4-5, date 6-7


@pytest.mark.parametrize("answer, counts", [
    ("time: five am; date: this week", (2, 2, 2)),             # both right: F1 1
    ("time: five am; date: week", (1, 2, 2)),                  # date 7-7 is not date 6-7: F1 2*1/(2+2) = 0.5
    ("", (0, 0, 2)),                                           # an empty answer predicts nothing: F1 0
    ("None", (0, 0, 2)),
    ("time five am; date: this week", (1, 1, 2)),              # a malformed part is skipped: F1 2/3
    ("time: FIVE AM; date: this week", (2, 2, 2)),             # values match case-insensitively
    ("time: five am; date: next month", (1, 1, 2)),            # a value not in the utterance labels nothing
    ("time: five; time: am", (1, 1, 2)),                       # adjacent words of one type merge (MASSIVE's BIO)
])
def test_slot_counts_against_hand_worked_answers(answer, counts):
    assert gm.slot_counts(answer, WORDS, GOLD, by_character=False) == counts


def test_slot_f1_over_a_corpus_and_by_character():
    # every occurrence of a value is labelled, as the study's subfinder does: "me" twice -> two predicted entities
    words, gold = ("me", "and", "me"), ("person", "Other", "Other")
    assert gm.slot_counts("person: me", words, gold, by_character=False) == (1, 2, 1)
    chinese = tuple("明天早上五点叫醒我")
    gold_zh = ("date", "date", "time", "time", "time", "time", "Other", "Other", "Other")
    assert gm.slot_counts("date: 明天; time: 五点", chinese, gold_zh, by_character=True) == (1, 2, 2)
    # corpus micro F1 of the two: (1 + 1) right, (2 + 2) predicted, (1 + 2) gold -> 2 * 2 / (4 + 3)
    assert f1_from_counts(1 + 1, 2 + 2, 1 + 2) == pytest.approx(4 / 7)


def test_bleu_and_chrf_of_identical_and_hand_worked_sentences():
    assert gm.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert gm.chrf(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # hypothesis "the cat sat on the mat", reference "the cat sat on a mat" (13a leaves them as they are):
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, brevity penalty 1
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert gm.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=1e-6)
    assert gm.bleu([""], ["the cat sat on a mat"]) == 0.0 and gm.chrf([""], ["the cat"]) == 0.0


def test_comet_is_optional_and_says_how_to_get_it(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install unbabel-comet"):
        gm.comet_score("Unbabel/wmt22-comet-da", ["a"], ["b"], ["c"])


# --- prompts, collation, generation --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from trainer.config import LLMConfig, LoraConfig
    from trainer.models.aligned import build_aligned_model
    from trainer.models.loading import load_llm_tokenizer

    torch.manual_seed(0)
    model = build_aligned_model(LLMConfig(), LoraConfig(r=4), "lora", ".cache/tiny-models", "causal_lm", "middle", 0)
    return model.eval(), load_llm_tokenizer(LLMConfig(), ".cache/tiny-models")


def example():
    return load_benchmark("massive", "en-US", "test", files=[str(FIXTURES / "massive_en-US_test.jsonl")])[0]


def test_plain_prompt_and_answer_only_loss(tiny):
    _, tokenizer = tiny
    prompts = ChatPrompts(tokenizer, "slot_filling")
    assert not prompts.chat   # the tiny tokenizer has no chat template: the documented plain format
    assert prompts.prompt(example()) == (f"{SLOT_FILLING_SYSTEM}\n\n### Input:\nwake me up at five am this week"
                                         f"\n\n### Response:\n")
    collate = GenerativeCollator(tokenizer, prompts, max_length=512)
    batch = collate([example()])
    answer = tokenizer("time: five am; date: this week", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    labels = batch["labels"][0][batch["attention_mask"][0].bool()]
    assert labels[-len(answer):].tolist() == answer and (labels[:-len(answer)] == -100).all()


def test_chat_template_prompt_and_answer(tiny):
    _, tokenizer = tiny
    saved = tokenizer.chat_template
    tokenizer.chat_template = ("{% for m in messages %}<|begin_of_text|>{{ m['role'] }}: {{ m['content'] }}"
                               "<|end_of_text|>{% endfor %}{% if add_generation_prompt %}<|begin_of_text|>assistant: "
                               "{% endif %}")
    try:
        prompts = ChatPrompts(tokenizer, "translation")
        e = translation_examples("flores", ["deu_Latn"], "eng_Latn", ["to_pivot"], "test",
                                 str(FIXTURES / "flores_plus_{language}_devtest.jsonl"))["deu_Latn-eng_Latn"][0]
        assert prompts.prompt(e).startswith("<|begin_of_text|>system: Translate the following sentences from German "
                                            "to English.<|end_of_text|>")
        assert prompts.answer(e) == e.target + "<|end_of_text|>"
        assert GenerativeCollator(tokenizer, prompts, 512).stop_ids() == [tokenizer.eos_token_id]
    finally:
        tokenizer.chat_template = saved


def test_generate_mode_is_greedy_decoding(tiny):
    model, tokenizer = tiny
    collate = GenerativeCollator(tokenizer, ChatPrompts(tokenizer, "slot_filling", system="Slots."), 64)
    examples = load_benchmark("massive", "en-US", "test", files=[str(FIXTURES / "massive_en-US_test.jsonl")])[:2]
    batch = collate.prompts_batch(examples)
    assert (batch["attention_mask"][:, -1] == 1).all() and batch["attention_mask"][1, 0] == 0   # left padding
    with torch.no_grad():
        out = model("generate", **batch, max_new_tokens=4, eos_token_id=[], pad_token_id=tokenizer.pad_token_id)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        for _ in range(4):   # argmax of the next-token logits, step by step, on the same left-padded batch
            nxt = model("logits", input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out.sequences, ids)


# --- configuration -------------------------------------------------------------------------------------------

def job(**task):
    return {"recipe": "align", "parallel": {"files": ["x"]}, "task": task}


def test_align_task_section_takes_a_generative_benchmark_or_task_files():
    j = validate(job(benchmark="massive", train_languages=["ar-SA", "en-US"], eval_languages=["de", "zh-CN"]))
    assert j.task.train_languages == ["arb_Arab", "eng_Latn"] and j.task.eval_languages == ["deu_Latn", "zho_Hans"]
    assert type(validate(job(train_files=["t.jsonl"])).task).__name__ == "PromptTaskConfig"
    with pytest.raises(ConfigError, match="task.benchmark: 'xnli' is nli: align trains generative benchmarks"):
        validate(job(benchmark="xnli", train_languages=["en"]))
    with pytest.raises(ConfigError, match=r"task.eval_languages: \['ace_Latn'\] are not languages of massive"):
        validate(job(benchmark="massive", train_languages=["en-US"], eval_languages=["ace"]))
    with pytest.raises(ConfigError, match="task.train_languages: eng_Latn is task.translation_pivot"):
        validate(job(benchmark="flores", train_languages=["eng_Latn", "deu_Latn"]))
    with pytest.raises(ConfigError, match="task.benchmark: 'massive' is generative"):
        validate({"recipe": "finetune", "task": {"benchmark": "massive"}})
