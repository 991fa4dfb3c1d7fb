"""Tagging (POS, NER) and extractive QA: the benchmarks' adapters on fixtures in their real formats, word alignment
of sub-word labels, QA windows, span decoding, the losses and the metrics against written-out computations.

Fixtures (tests/fixtures/benchmarks/): the hub datasets' columns and ids as `datasets` exports them (XTREME's udpos,
WikiANN, MasakhaPOS, IndoNLI, Myanmar-XNLI, TyDiQA-GoldP's SQuAD layout), the releases' files where the hub copy is a
script dataset or TSV (MasakhaNER's CoNLL `word tag` lines, AfriXNLI's TSV).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer.data.benchmark_files import benchmark_rows
from trainer.data.benchmarks import BENCHMARKS, NER_TAGS, UPOS_TAGS, TaskExample, load_benchmark
from trainer.errors import DataError
from trainer.eval import sharded
from trainer.eval.metrics import (entities, entity_counts, exact_match, f1_from_counts, normalize_answer,
                                  tag_accuracy_counts, token_f1)
from trainer.eval.qa import answer_text, best_spans
from trainer.eval.task_scores import QAScorer, TaggingScorer, word_predictions
from trainer.objectives.task import span_loss, token_classification_loss

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "benchmarks"
UPOS = {name: i for i, name in enumerate(UPOS_TAGS)}


# --- adapters -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, language, split, file, flores, first_words, tags", [
    ("udpos", "English", "test", "udpos_English_test.jsonl", "eng_Latn", ("What", "if"),
     [UPOS[t] for t in ("PRON", "SCONJ", "PROPN", "VERB", "ADP", "PROPN", "PUNCT")]),
    # MasakhaPOS numbers UPOS as the hub's universal_dependencies (NOUN 0, PROPN 10, ADV 14, VERB 16): mapped by name
    ("masakhapos", "yor", "test", "masakhapos_yor_test.jsonl", "yor_Latn", ("Ọ̀gbẹ́ni", "Nuhu"),
     [UPOS[t] for t in ("NOUN", "PROPN", "PROPN", "VERB", "NOUN", "ADV", "NOUN", "VERB", "NOUN")]),
    ("wikiann", "en", "train", "wikiann_en_train.jsonl", "eng_Latn", ("R.H.", "Saunders"),
     [3, 4, 0, 3, 4, 4, 0, 0, 0, 0, 0]),
    # the release's CoNLL lines, tag names; DATE is 7, 8 (after WikiANN's seven)
    ("masakhaner", "hau", "test", "masakhaner_hau_test.txt", "hau_Latn", ("Gwamnatin", "Jihar"),
     [3, 4, 4, 0, 0, 0, 7, 8, 0]),
])
def test_tagging_fixtures_load_with_their_tags_and_language(name, language, split, file, flores, first_words, tags):
    examples = load_benchmark(name, language, split, files=[str(FIXTURES / file)])
    first = examples[0]
    assert first.language == flores and first.split == split and first.label == -1
    assert first.words[:2] == first_words and list(first.tags) == tags and len(first.tags) == len(first.words)
    assert first.texts == (" ".join(first.words),)
    assert len({e.id for e in examples}) == len(examples) and first.id.startswith(f"{name}/{flores}/{split}/")
    assert load_benchmark(name, flores, split, files=[str(FIXTURES / file)]) == examples   # FLORES code too
    assert [BENCHMARKS[name].labels[t] for t in first.tags][:2] == \
        {"udpos": ["PRON", "SCONJ"], "masakhapos": ["NOUN", "PROPN"], "wikiann": ["B-ORG", "I-ORG"],
         "masakhaner": ["B-ORG", "I-ORG"]}[name]


@pytest.mark.parametrize("name, language, split, file, flores, labels, first_texts", [
    ("indonli", "id", "validation", "indonli_validation.jsonl", "ind_Latn", [0, 1, 2],
     ("Presiden Joko Widodo meresmikan jalan tol baru di Jawa Tengah pada hari Senin.",
      "Jalan tol baru diresmikan di Jawa Tengah.")),
    ("myanmar_xnli", "my", "test", "myanmar_xnli_test.jsonl", "mya_Mymr", [1, 2, 0],      # label names
     ("ကောင်းပြီ၊ ကျွန်မ အဲဒါကို မစဉ်းစားခဲ့ပေမယ့် စိတ်ပျက်လွန်းလို့ သူနဲ့ ထပ်ပြီး စကားပြောဖြစ်ခဲ့တယ်။",
      "ကျွန်မ သူနဲ့ ထပ်ပြီး စကားမပြောခဲ့ဘူး။")),
    ("myanmar_xnli", "en", "test", "myanmar_xnli_test.jsonl", "eng_Latn", [1, 2, 0],      # the English columns
     ("Well, I wasn't even thinking about that, but I was so frustrated, and I ended up talking to him again.",
      "I havent spoken to him again.")),
    ("afrixnli", "hau", "test", "afrixnli_hau_test.tsv", "hau_Latn", [0, 2, 1],           # TSV: quotes are text
     ('Ya ce, "Mama, na dawo gida."', "Ya gaya wa mahaifiyarsa cewa ya dawo gida.")),
])
def test_new_nli_fixtures_load_with_their_labels_and_language(name, language, split, file, flores, labels,
                                                              first_texts):
    examples = load_benchmark(name, language, split, files=[str(FIXTURES / file)])
    assert [e.label for e in examples] == labels and all(e.language == flores for e in examples)
    assert examples[0].texts == first_texts


def test_tydiqa_keeps_its_languages_rows_and_every_gold_answer():
    swahili = load_benchmark("tydiqa", "sw", "test", files=[str(FIXTURES / "tydiqa_validation.jsonl")])
    assert [e.id for e in swahili] == ["tydiqa/swh_Latn/test/swahili-2402381436012419512-0",
                                       "tydiqa/swh_Latn/test/swahili-7285601853114410092-1"]   # English row skipped
    first, second = swahili
    assert first.texts[1] == "Mji mkuu wa Kenya ni upi?" and first.answers == (("Nairobi", 0), ("Nairobi", 0))
    assert second.texts[0][49:49 + len("zaidi ya milioni nne")] == second.answers[0][0] == "zaidi ya milioni nne"
    english = load_benchmark("tydiqa", "eng_Latn", "test", files=[str(FIXTURES / "tydiqa_validation.jsonl")])
    assert len(english) == 1 and english[0].answers[0][0] == "the Mediterranean Sea"


def test_every_new_benchmark_language_is_a_flores_code_of_the_table_or_flores_style():
    from trainer.languages.table import language_table

    table = language_table()
    for name in ("indonli", "myanmar_xnli", "afrixnli", "udpos", "masakhapos", "wikiann", "masakhaner", "tydiqa"):
        for code, flores in BENCHMARKS[name].languages.items():
            assert flores in table or code in ("bbj", "pcm"), (name, code, flores)   # Ghomálá', Naija: not in NLLB
    wikiann = BENCHMARKS["wikiann"].languages
    assert wikiann["nl"] == "nld_Latn" and wikiann["am"] == "amh_Ethi" and "xx" not in wikiann   # via the table


@pytest.mark.parametrize("file, content, name, language, message", [
    ("yor.jsonl", '{"id": "0", "tokens": ["a"], "upos": [0]}\n{"id": "1", "tokens": ["a", "b"], "upos": [0, 13]}',
     "masakhapos", "yor", r"yor.jsonl: row 2: tag 13 of word 2 \('b'\) does not map to 0 ADJ, 1 ADP"),  # the hub's "_"
    ("en.jsonl", '{"tokens": ["a", "b"], "ner_tags": [0, 7], "langs": ["en", "en"]}',
     "wikiann", "en", r"row 1: tag 7 of word 2 \('b'\) does not map to 0 O, 1 B-PER"),             # WikiANN: no DATE
    ("en.jsonl", '{"tokens": ["a", "b"], "ner_tags": [0, 1], "langs": ["en", "de"]}',
     "wikiann", "en", r"row 1: language 'de' in column 'langs', but this is the 'en' set"),
    ("en.jsonl", '{"tokens": ["a", "b", "c"], "ner_tags": [0, 1], "langs": ["en", "en", "en"]}',
     "wikiann", "en", r"row 1: 3 words but tags \[0, 1\]"),
    ("hau.txt", "Kano B-LOC\nta B-MISC\n", "masakhaner", "hau", r"hau.txt: row 1: tag 'B-MISC' of word 2 \('ta'\)"),
    ("qa.jsonl", '{"id": "thai-1-0", "context": "c", "question": "q", "answers": {"text": ["c"], "answer_start": [0]}}',
     "tydiqa", "sw", r"row 1: id 'thai-1-0': language 'thai' is not a TyDiQA-GoldP language"),
    ("qa.jsonl", "{}", "udpos", "Klingon", r"udpos: language 'Klingon' is not one of its languages \(Afrikaans"),
])
def test_a_tag_or_language_that_does_not_map_names_file_row_and_value(tmp_path, file, content, name, language,
                                                                      message):
    (tmp_path / file).write_text(content + "\n")
    with pytest.raises(DataError, match=message):
        load_benchmark(name, language, "test", files=[str(tmp_path / file)])


@pytest.mark.parametrize("name, language, file", [
    ("udpos", "English", "udpos_English_test.jsonl"), ("masakhapos", "yor", "masakhapos_yor_test.jsonl"),
    ("wikiann", "en", "wikiann_en_train.jsonl"), ("masakhaner", "hau", "masakhaner_hau_test.txt"),
    ("tydiqa", "sw", "tydiqa_validation.jsonl"), ("myanmar_xnli", "my", "myanmar_xnli_test.jsonl"),
    ("afrixnli", "hau", "afrixnli_hau_test.tsv"), ("indonli", "id", "indonli_validation.jsonl"),
])
def test_examples_written_back_in_the_benchmarks_columns_load_the_same(name, language, file, tmp_path):
    import json

    split = "train" if "train" in file else "validation" if "validation" in file and name != "tydiqa" else "test"
    examples = load_benchmark(name, language, split, files=[str(FIXTURES / file)])
    out = tmp_path / "rows.jsonl"
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in benchmark_rows(name, examples)))
    assert load_benchmark(name, language, split, files=[str(out)]) == examples


# --- word alignment of sub-word labels --------------------------------------------------------------------------

def test_each_words_tag_sits_on_its_first_subtoken_with_a_tokenizer_that_splits_words(tiny_path):
    from transformers import AutoTokenizer

    from trainer.data.tagging import TaggingCollator

    tok = AutoTokenizer.from_pretrained(tiny_path("llama"))
    example = load_benchmark("wikiann", "en", "train", files=[str(FIXTURES / "wikiann_en_train.jsonl")])[1]
    batch = TaggingCollator(tok, max_length=64)([example])
    ids = batch["input_ids"][0].tolist()
    assert ids == tok(" ".join(example.words))["input_ids"]               # the words tokenized as running text
    tokens = tok.convert_ids_to_tokens(ids)
    word_ids = tok([[w if i == 0 else " " + w for i, w in enumerate(example.words)]],
                   is_split_into_words=True).word_ids(0)
    assert len([w for w in word_ids if w == 1]) > 1                         # "Hemingway" is split into sub-words
    labels, index = batch["labels"][0].tolist(), batch["word_index"][0].tolist()
    firsts = [t for t, w in enumerate(word_ids) if w is not None and (t == 0 or word_ids[t - 1] != w)]
    assert [labels[t] for t in firsts] == list(example.tags) and [index[t] for t in firsts] == list(range(8))
    assert all(labels[t] == -100 and index[t] == -1 for t in range(len(ids)) if t not in firsts)
    assert tokens[0] == tok.bos_token                                      # special tokens carry no label
    # truncation: the words past max_length have no token, and a scorer counts them as not predicted
    short = TaggingCollator(tok, max_length=6)([example])
    kept = (short["word_index"][0] >= 0).sum().item()
    assert 0 < kept < len(example.words)
    predicted = torch.where(short["labels"] >= 0, short["labels"], torch.zeros_like(short["labels"]))
    words = word_predictions(predicted, short["word_index"], [len(example.words)])[0]
    assert words == list(example.tags[:kept]) + [-1] * (len(example.words) - kept)


def test_tagging_scorer_counts_words_and_entities_split_across_subwords(tiny_path):
    from transformers import AutoTokenizer

    from trainer.data.tagging import TaggingCollator

    tok = AutoTokenizer.from_pretrained(tiny_path("llama"))
    collate = TaggingCollator(tok, max_length=64)
    gold = TaskExample("x", "eng_Latn", "test", ("",), -1, words=("Ernest", "Hemingway", "visited", "Oak", "Park"),
                       tags=(1, 2, 0, 5, 6))
    guess = (1, 2, 0, 5, 0)                      # PER right (its words split into sub-tokens), LOC cut short

    def predict(batch: dict) -> torch.Tensor:    # logits that put each word's guess on its sub-tokens
        logits = torch.zeros(*batch["input_ids"].shape, 7)
        for t, w in enumerate(batch["word_index"][0].tolist()):
            if w >= 0:
                logits[0, t, guess[w]] = 5.0
        return logits

    entity = TaggingScorer(predict, collate, NER_TAGS[:7], "entity_f1")
    counts = torch.tensor(entity.count([gold, gold], keep=1), dtype=torch.float64)   # the padding repeat not counted
    assert counts.tolist() == [1, 2, 2]                                    # 1 right, 2 predicted, 2 gold
    assert entity.scores(counts) == {"": pytest.approx(2 * 1 / (2 + 2))}
    accuracy = TaggingScorer(predict, collate, NER_TAGS[:7], "accuracy")
    assert accuracy.count([gold], keep=1) == [4, 5]
    assert accuracy.scores(torch.tensor([4.0, 5.0], dtype=torch.float64)) == {"": 0.8}


# --- QA windows and span decoding ----------------------------------------------------------------------------------

def test_qa_windows_overlap_and_label_the_window_holding_the_whole_answer(tiny_path):
    from transformers import AutoTokenizer

    from trainer.data.qa import QACollator

    tok = AutoTokenizer.from_pretrained(tiny_path("llama"))
    example = load_benchmark("tydiqa", "en", "test", files=[str(FIXTURES / "tydiqa_validation.jsonl")])[0]
    context, answer = example.texts[0], example.answers[0][0]
    batch = QACollator(tok, max_length=48, stride=8)([example])
    windows = batch["input_ids"].shape[0]
    assert windows > 2 and batch["example_index"].tolist() == [0] * windows
    spans = [[tuple(batch["offsets"][w, t].tolist()) for t in range(batch["input_ids"].shape[1])
              if batch["context_mask"][w, t]] for w in range(windows)]
    assert spans[0][0][0] == 0 and spans[-1][-1][1] == len(context)                 # the windows cover the context
    for w in range(windows - 1):                                                    # consecutive windows share 8 tokens
        assert spans[w][-8:] == spans[w + 1][:8]
    start, end = batch["start_positions"].tolist(), batch["end_positions"].tolist()
    holding = [w for w in range(windows) if start[w] >= 0]
    assert holding                                                                  # one window holds it whole
    for w in holding:
        assert answer_text(context, batch["offsets"][w], start[w], end[w]) == answer
    crossing = [w for w in range(windows) if start[w] < 0 and spans[w][0][0] <= context.index(answer) < spans[w][-1][1]]
    assert crossing, "the answer should cross a window boundary in this setting"   # cut there: no target
    with pytest.raises(DataError, match="leaving"):
        QACollator(tok, max_length=24, stride=8)([example])
    moved = TaskExample(example.id, "eng_Latn", "test", example.texts, -1, answers=((answer, 3),))
    with pytest.raises(DataError, match="is not at character 3"):
        QACollator(tok, max_length=48, stride=8)([moved])


def test_best_span_is_the_best_valid_span_over_all_windows():
    neg = -10.0
    start = torch.full((3, 6), neg)
    end = torch.full((3, 6), neg)
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    # example 0, window 0: the best start (9 at 4) has its best end before it (8 at 2): invalid; 4..4 scores 9+1
    start[0, 4], end[0, 2], end[0, 4] = 9.0, 8.0, 1.0
    start[0, 0], end[0, 0] = 20.0, 20.0                    # outside the context: never chosen
    # example 0, window 1: 1..3 scores 6+6 = 12 > 10, but spans 1 token past max length 2 are refused: 2..3 = 5+6
    start[1, 1], start[1, 2], end[1, 3] = 6.0, 5.0, 6.0
    # example 1, window 2: only one valid token span
    start[2, 3], end[2, 3] = 1.0, 1.0
    spans = best_spans(start, end, mask, torch.tensor([0, 0, 1]), num_examples=3, max_answer_tokens=2)
    expected_window1 = 5.0 + 6.0
    assert expected_window1 > 9.0 + 1.0
    assert spans == [(1, 2, 3), (2, 3, 3), (-1, -1, -1)]   # example 2 has no window: no span
    # written out: every valid (w, i, j) of example 0 and its score
    valid = [(start[w, i] + end[w, j], w, i, j) for w in (0, 1) for i in range(6) for j in range(6)
             if mask[w, i] and mask[w, j] and i <= j < i + 2]
    best = max(valid, key=lambda v: v[0])
    assert spans[0] == (best[1], best[2], best[3])


def test_qa_scorer_reads_the_answer_back_from_the_offsets(tiny_path):
    from transformers import AutoTokenizer

    from trainer.data.qa import QACollator

    tok = AutoTokenizer.from_pretrained(tiny_path("llama"))
    example = load_benchmark("tydiqa", "en", "test", files=[str(FIXTURES / "tydiqa_validation.jsonl")])[0]
    train = QACollator(tok, max_length=48, stride=8)
    eval_collate = QACollator(tok, max_length=48, stride=8, targets=False)
    target = train([example])

    def predict(batch: dict):                             # peaks at the gold tokens of the window holding the answer
        start, end = torch.zeros(batch["input_ids"].shape), torch.zeros(batch["input_ids"].shape)
        for w, (s, e) in enumerate(zip(target["start_positions"].tolist(), target["end_positions"].tolist())):
            if s >= 0:
                start[w, s], end[w, e] = 10.0, 10.0
        return start, end

    scorer = QAScorer(predict, eval_collate)
    counts = torch.tensor(scorer.count([example], keep=1), dtype=torch.float64)
    assert counts.tolist() == [1.0, 1.0, 1.0] and scorer.scores(counts) == {"": 1.0, "em": 1.0}
    assert eval_collate([example])["start_positions"].tolist() == [-100] * target["input_ids"].shape[0]


def _squad_v11_evaluate(dataset: list[dict], predictions: dict[str, str]) -> dict[str, float]:
    """SQuAD v1.1's evaluate-v1.1.py written out: a question without a prediction counts in the total and scores
    nothing; otherwise the max over its gold answers of exact match and token F1 (after normalize_answer)."""
    import collections
    import re
    import string

    def normalize_answer(s):
        def remove_articles(text):
            return re.sub(r"\b(a|an|the)\b", " ", text)

        def white_space_fix(text):
            return " ".join(text.split())

        def remove_punc(text):
            exclude = set(string.punctuation)
            return "".join(ch for ch in text if ch not in exclude)

        return white_space_fix(remove_articles(remove_punc(s.lower())))

    def f1_score(prediction, ground_truth):
        prediction_tokens = normalize_answer(prediction).split()
        ground_truth_tokens = normalize_answer(ground_truth).split()
        common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    def exact_match_score(prediction, ground_truth):
        return normalize_answer(prediction) == normalize_answer(ground_truth)

    def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
        return max(metric_fn(prediction, gt) for gt in ground_truths)

    f1 = exact_match = total = 0
    for qa in dataset:
        total += 1
        if qa["id"] not in predictions:     # "Unanswered question ... will receive score 0."
            continue
        ground_truths = qa["answers"]
        prediction = predictions[qa["id"]]
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
        f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)
    return {"exact_match": exact_match / total, "f1": f1 / total}


def test_an_unanswered_question_scores_zero_as_the_squad_script_scores_it(tiny_path):
    from transformers import AutoTokenizer

    from trainer.data.qa import QACollator

    tok = AutoTokenizer.from_pretrained(tiny_path("llama"))
    answered = load_benchmark("tydiqa", "en", "test", files=[str(FIXTURES / "tydiqa_validation.jsonl")])[0]
    # a gold answer that normalises to "" (an article): the answer "" would match it exactly
    context = "The river runs through the city."
    unanswered = TaskExample("squad/eng_Latn/test/u1", "eng_Latn", "test", (context, "Which article?"), -1,
                             answers=(("The", 0), ("the.", context.index("the city"))))
    eval_collate = QACollator(tok, max_length=48, stride=8, targets=False)
    target = QACollator(tok, max_length=48, stride=8)([answered])

    def at_gold(batch: dict):                             # the answered example: peaks at its gold tokens
        start, end = torch.zeros(batch["input_ids"].shape), torch.zeros(batch["input_ids"].shape)
        for w, (s, e) in enumerate(zip(target["start_positions"].tolist(), target["end_positions"].tolist())):
            if s >= 0:
                start[w, s], end[w, e] = 10.0, 10.0
        return start, end

    def no_span(batch: dict):                             # every span -inf: best_spans finds none (window -1)
        shape = batch["input_ids"].shape
        return torch.full(shape, float("-inf")), torch.full(shape, float("-inf"))

    counts = (torch.tensor(QAScorer(at_gold, eval_collate).count([answered], keep=1), dtype=torch.float64)
              + torch.tensor(QAScorer(no_span, eval_collate).count([unanswered], keep=1), dtype=torch.float64))
    assert counts.tolist() == [1.0, 1.0, 2.0]            # EM sum, F1 sum, examples: the unanswered one adds 0, 0
    scores = QAScorer(no_span, eval_collate).scores(counts)
    dataset = [{"id": e.id, "answers": [text for text, _ in e.answers]} for e in (answered, unanswered)]
    official = _squad_v11_evaluate(dataset, {answered.id: answered.answers[0][0]})   # no prediction for u1
    assert official == {"exact_match": 0.5, "f1": 0.5}
    assert scores == pytest.approx({"em": official["exact_match"], "": official["f1"]})
    # what the script would give had "" been submitted as its answer: EM 1 (the old scoring of an unanswered one)
    assert _squad_v11_evaluate(dataset[1:], {unanswered.id: ""})["exact_match"] == 1.0


def test_counts_over_two_ranks_add_up_to_one_rank_and_skip_the_padding(monkeypatch):
    examples = {"a": list(range(5)), "b": list(range(3))}
    seen: list[tuple[list, int]] = []

    def count(chunk: list, keep: int) -> list[float]:
        seen.append((chunk, keep))
        return [float(sum(chunk[:keep])), float(keep)]

    whole = sharded.counts_over_ranks(count, examples, batch_size=2, size=2)
    assert whole["a"].tolist() == [10.0, 5.0] and whole["b"].tolist() == [3.0, 3.0]
    parts = []
    monkeypatch.setattr(sharded.distributed, "all_reduce_sum", lambda values: values)   # each rank's own sums
    for rank in (0, 1):
        seen.clear()
        parts.append(sharded.counts_over_ranks(count, examples, batch_size=2, size=2, rank=rank, world_size=2))
        assert [len(chunk) for chunk, _ in seen] == [2, 1, 2]   # the same forwards on both ranks (padded slices)
    assert (parts[0]["a"] + parts[1]["a"]).tolist() == [10.0, 5.0]
    assert (parts[0]["b"] + parts[1]["b"]).tolist() == [3.0, 3.0]   # rank 1's repeat of example 1 not counted


# --- losses against written-out computations ---------------------------------------------------------------------

def test_token_classification_loss_is_the_mean_over_first_subtokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, generator=g, requires_grad=True)
    labels = torch.tensor([[-100, 2, -100, 0], [1, -100, -100, -100]])
    total, n = 0.0, 0
    for b in range(2):
        for t in range(4):
            if labels[b, t] >= 0:
                row = logits[b, t].tolist()
                total += -(row[labels[b, t]] - math.log(sum(math.exp(x) for x in row)))
                n += 1
    loss = token_classification_loss(logits, labels)
    assert loss.item() == pytest.approx(total / n, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 1].abs().sum() > 0   # ignored positions: no gradient
    none = token_classification_loss(logits, torch.full((2, 4), -100))
    assert none.item() == 0.0 and none.requires_grad


def test_span_loss_averages_start_and_end_cross_entropy_over_windows_with_the_answer():
    g = torch.Generator().manual_seed(1)
    start, end = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    starts, ends = torch.tensor([1, -100, 4]), torch.tensor([2, -100, 4])

    def nll(row: list, k: int) -> float:
        return -(row[k] - math.log(sum(math.exp(x) for x in row)))

    windows = [0, 2]
    expected = sum(nll(start[w].tolist(), starts[w]) + nll(end[w].tolist(), ends[w]) for w in windows) / (2 * 2)
    assert span_loss(start, end, starts, ends).item() == pytest.approx(expected, rel=1e-6)
    assert span_loss(start, end, torch.full((3,), -100), torch.full((3,), -100)).item() == 0.0


# --- metrics against hand-worked examples ----------------------------------------------------------------------------

def test_entity_chunks_follow_conlleval():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert entities(["I-PER", "I-PER", "O"]) == {("PER", 0, 1)}               # I- after O starts an entity
    assert entities(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2)}   # a type change starts one
    assert entities(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 0), ("PER", 1, 2)}
    assert entities(["O", "O"]) == set() and entities([]) == set()
    with pytest.raises(ValueError, match="is not O, B-<type> or I-<type>"):
        entities(["PER"])


def test_entity_f1_and_pos_accuracy_by_hand():
    gold = ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "O", "B-LOC"]
    pred = ["B-PER", "I-PER", "O", "B-ORG", "O", "O", "B-PER"]
    # gold: PER 0-1, ORG 3-4, LOC 6; predicted: PER 0-1 (right), ORG 3-3 (too short), PER 6 (wrong type)
    assert entity_counts(gold, pred) == (1, 3, 3)
    precision, recall = 1 / 3, 1 / 3
    assert f1_from_counts(1, 3, 3) == pytest.approx(2 * precision * recall / (precision + recall))
    assert f1_from_counts(0, 0, 0) == 0.0
    assert f1_from_counts(*entity_counts(gold, gold)) == 1.0
    assert tag_accuracy_counts([1, 2, 3, 4], [1, 0, 3, -1]) == (2, 4)       # -1: a word without prediction


def test_squad_exact_match_and_f1_by_hand():
    assert normalize_answer("  The Mediterranean, sea!  ") == "mediterranean sea"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("the Mediterranean Sea.", ["Mediterranean Sea"]) == 1.0
    assert exact_match("Mediterranean", ["Mediterranean Sea", "mediterranean"]) == 1.0   # max over gold answers
    # "in the mediterranean" vs "the mediterranean sea": tokens {in, mediterranean} vs {mediterranean, sea}
    precision, recall = 1 / 2, 1 / 2
    assert token_f1("in the Mediterranean", ["the Mediterranean Sea"]) == pytest.approx(
        2 * precision * recall / (precision + recall))
    assert token_f1("sea sea", ["sea"]) == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))   # bag of tokens: 1 shared
    assert token_f1("", ["Nairobi"]) == 0.0 and exact_match("", ["Nairobi"]) == 0.0      # an empty prediction
    assert token_f1("zaidi ya milioni", ["Nairobi", "zaidi ya milioni nne"]) == pytest.approx(2 * 1 * 0.75 / 1.75)


# --- the task section of a job -------------------------------------------------------------------------------------

def _validate(task: dict, **job):
    from trainer.config import JobConfig, validate

    return validate({"recipe": "finetune", "task": task, **job}, JobConfig)


def test_task_section_checks_metric_training_benchmark_and_entity_types():
    from trainer.config import ConfigError

    job = _validate({"benchmark": "masakhaner", "train_benchmark": "wikiann", "entity_types_as_o": ["DATE"]})
    assert job.task.resolved_metric == "entity_f1"
    assert _validate({"benchmark": "udpos"}).task.resolved_metric == "accuracy"
    assert _validate({"benchmark": "tydiqa"}).task.resolved_metric == "squad_f1"
    for task, message in [({"benchmark": "wikiann", "train_benchmark": "masakhaner"}, "not the first of wikiann"),
                          ({"benchmark": "wikiann", "train_benchmark": "udpos"}, "udpos is pos, wikiann is ner"),
                          ({"benchmark": "udpos", "metric": "entity_f1"}, "does not score udpos"),
                          ({"benchmark": "tydiqa", "metric": "accuracy"}, "does not score tydiqa"),
                          ({"benchmark": "masakhaner", "entity_types_as_o": ["MISC"]}, "not entity types"),
                          ({"benchmark": "xnli", "entity_types_as_o": ["DATE"]}, "not an NER benchmark"),
                          ({"benchmark": "tydiqa", "max_length": 64, "doc_stride": 64}, "must be below")]:
        with pytest.raises(ConfigError, match=message):
            _validate(task)
    with pytest.raises(ConfigError, match="S1\\+FT"):
        _validate({"benchmark": "wikiann"}, model={"stage1_export": "x"})
    from trainer.config import JobConfig, validate
    with pytest.raises(ConfigError, match="stage2"):
        validate({"recipe": "stage2", "task": {"benchmark": "tydiqa"},
                  "model": {"stage1_export": "a", "task_export": "b"}}, JobConfig)


def test_entity_types_read_as_o_in_gold_and_prediction(tmp_path):
    from trainer.recipes import tasks

    job = _validate({"benchmark": "masakhaner", "train_benchmark": "wikiann", "entity_types_as_o": ["DATE"],
                     "files": {"test": str(FIXTURES / "masakhaner_hau_test.txt")}})
    names = tasks.tag_names(job)
    assert names[:7] == list(NER_TAGS[:7]) and names[7:] == ["O", "O"]
    first = tasks.examples(job, "masakhaner", "hau", "test")[0]
    assert list(first.tags) == [3, 4, 4, 0, 0, 0, 0, 0, 0]                  # ranar Litinin (DATE) read as O


def test_the_source_languages_dev_and_test_sets_come_from_the_training_benchmark_when_the_benchmark_lacks_it(
        monkeypatch):
    from trainer.recipes import tasks

    job = _validate({"benchmark": "masakhaner", "train_benchmark": "wikiann", "target_languages": ["hau"]})
    calls = []
    monkeypatch.setattr(tasks, "examples", lambda job, benchmark, language, split:
                        calls.append((benchmark, language, split)) or [])
    tasks.evaluation_sets(job)
    assert sorted(calls) == sorted([("wikiann", "eng_Latn", "validation"), ("masakhaner", "hau", "validation"),
                                    ("wikiann", "eng_Latn", "test"), ("masakhaner", "hau", "test")])


def test_tagging_and_qa_examples_whose_texts_no_longer_hold_their_targets_are_not_written_back():
    from dataclasses import replace

    example = load_benchmark("wikiann", "en", "train", files=[str(FIXTURES / "wikiann_en_train.jsonl")])[0]
    with pytest.raises(DataError, match="tags cannot follow a translation"):
        benchmark_rows("wikiann", [replace(example, texts=("übersetzt",))])
    qa = load_benchmark("tydiqa", "sw", "test", files=[str(FIXTURES / "tydiqa_validation.jsonl")])[1]
    with pytest.raises(DataError, match="not at its offset"):
        benchmark_rows("tydiqa", [replace(qa, texts=("Nairobi has more than four million people.", qa.texts[1]))])
