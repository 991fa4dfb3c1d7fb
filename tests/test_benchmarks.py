"""The MT-LLM study's benchmarks through their adapters, the task heads against hand computations, and
S-DEV / T-DEV selection on synthetic dev histories.

Fixtures (tests/fixtures/benchmarks/) are a few rows in each benchmark's real format: the hub
datasets' columns and label ids as `datasets` exports them (MNLI, XNLI, AmericasNLI, NusaX,
Belebele), and the release files where there is no hub dataset (Kardeş-NLU's CSV, NusaX's CSV).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer.data.benchmarks import BENCHMARKS, TaskExample, load_benchmark
from trainer.errors import DataError
from trainer.eval.selection import best_step, select_checkpoints
from trainer.models.heads import ClassificationHead, MultipleChoiceHead
from trainer.objectives.task import classification_loss

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "benchmarks"


@pytest.mark.parametrize("name, language, split, file, flores, labels, first_texts", [
    ("mnli", "en", "train", "mnli_train.jsonl", "eng_Latn", [1, 0, 0, 2],
     ("Conceptually cream skimming has two basic dimensions - product and geography.",
      "Product and geography are what make cream skimming work. ")),
    ("xnli", "de", "validation", "xnli_de_validation.jsonl", "deu_Latn", [1, 2, 0],
     ("Und er hat gesagt, Mama, ich bin daheim.", "Er rief seine Mutter an, sobald er aus dem Schulbus stieg.")),
    ("americasnli", "quy", "test", "americasnli_quy_test.jsonl", "quy_Latn", [2, 0],
     ("Chaymi, payqa nirqa, mamá, wasipim kachkani.", "Manam imatapas nirqachu.")),
    ("kardes_nli", "kk", "validation", "xnli.dev.kk.csv", "kaz_Cyrl", [0, 2, 1],      # the translated pair
     ("Мен жақсы сияқты болдым, және солай болды!", "Мен иә дегеннен кейін ол аяқталды.")),
    ("nusax_senti", "ace", "train", "nusax_ace_train.csv", "ace_Latn", [2, 0, 1],     # label names
     ("Nikmati cicit gulai, ngon that rasa jih",)),
    ("nusax_senti", "eng", "train", "nusax_eng_train.jsonl", "eng_Latn", [2, 0],      # ClassLabel ids
     ("Enjoy the goat curry, it tastes very good",)),
])
def test_each_fixture_loads_with_its_labels_and_language(name, language, split, file, flores, labels, first_texts):
    examples = load_benchmark(name, language, split, files=[str(FIXTURES / file)])
    assert [e.label for e in examples] == labels
    assert all(e.language == flores and e.split == split and not e.choices for e in examples)
    assert examples[0].texts == first_texts
    assert len({e.id for e in examples}) == len(examples) and examples[0].id.startswith(f"{name}/{flores}/{split}/")
    # the FLORES code names the language as well as the benchmark's own code
    assert load_benchmark(name, flores, split, files=[str(FIXTURES / file)]) == examples


def test_belebele_has_four_choices_and_a_zero_based_answer():
    examples = load_benchmark("belebele", "eng_Latn", "test", files=[str(FIXTURES / "belebele_eng_Latn.jsonl")])
    first, second = examples
    assert first.label == 3 and second.label == 1 and len(first.choices) == 4
    assert first.texts[1].startswith("According to the passage") and second.choices[1] == "More force"
    assert first.id == "belebele/eng_Latn/test/https://en.wikibooks.org/wiki/Accordion/Right_hand#1"


def test_stable_ids_name_the_native_id():
    mnli = load_benchmark("mnli", "en", "train", files=[str(FIXTURES / "mnli_train.jsonl")])
    assert [e.id for e in mnli] == [f"mnli/eng_Latn/train/{i}" for i in range(4)]          # GLUE's idx
    kardes = load_benchmark("kardes_nli", "kk", "validation", files=[str(FIXTURES / "xnli.dev.kk.csv")])
    assert [e.id.rsplit("/", 1)[1] for e in kardes] == ["9", "10", "11"]                  # the release's index


def test_a_label_or_language_that_does_not_map_names_file_row_and_value(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"premise": "a", "hypothesis": "b", "label": 0}\n{"premise": "a", "hypothesis": "b", "label": 3}\n')
    with pytest.raises(DataError, match=rf"{bad}: row 2: label 3 does not map to 0 entailment, 1 neutral"):
        load_benchmark("xnli", "de", "validation", files=[str(bad)])
    bad.write_text('{"premise": "a", "hypothesis": "b", "label": "maybe"}\n')
    with pytest.raises(DataError, match=r"row 1: label 'maybe'"):
        load_benchmark("xnli", "de", "validation", files=[str(bad)])
    with pytest.raises(DataError, match=r"xnli: language 'xx' is not one of its languages \(ar, bg"):
        load_benchmark("xnli", "xx", "validation", files=[str(bad)])
    with pytest.raises(DataError, match=r"row 1: no column 'premise'"):
        bad.write_text('{"sentence1": "a", "sentence2": "b", "label": 0}\n')
        load_benchmark("xnli", "de", "validation", files=[str(bad)])
    with pytest.raises(DataError, match="not on the hub"):
        load_benchmark("kardes_nli", "kk", "test")
    with pytest.raises(DataError, match="unknown; choose one of mnli, xnli"):
        load_benchmark("mlqa", "de", "test")


def test_race_is_belebeles_english_training_data_in_its_format():
    """RACE (the English multiple-choice training data, as in Belebele's assembled training set): four options,
    the answer letter as the choice index, one id per question even where questions share an article."""
    examples = load_benchmark("race", "en", "train", files=[str(FIXTURES / "race_train.jsonl")])
    assert [e.label for e in examples] == [2, 0, 3] and all(len(e.choices) == 4 for e in examples)
    assert examples[0].id == "race/eng_Latn/train/high10001.txt#1" and examples[1].id.endswith("#2")
    assert examples[0].texts[1] == "What did the writer talk about?"
    assert examples[0].choices[2] == "The lake near the village"
    assert BENCHMARKS["race"].labels == BENCHMARKS["belebele"].labels   # train_benchmark: race for belebele


def test_every_benchmark_states_its_task_and_label_count():
    assert {b.name: (b.task, b.num_labels) for b in BENCHMARKS.values()} == {
        "mnli": ("nli", 3), "xnli": ("nli", 3), "americasnli": ("nli", 3), "kardes_nli": ("nli", 3),
        "nusax_senti": ("sentiment", 3), "belebele": ("multiple_choice", 4), "topic": ("classification", 3),
        "race": ("multiple_choice", 4),
        "indonli": ("nli", 3), "myanmar_xnli": ("nli", 3), "afrixnli": ("nli", 3), "udpos": ("pos", 17),
        "masakhapos": ("pos", 17), "wikiann": ("ner", 7), "masakhaner": ("ner", 9), "topic_tags": ("ner", 11),
        "tydiqa": ("qa", 0), "topic_qa": ("qa", 0), "massive": ("slot_filling", 0), "flores": ("translation", 0),
        "topic_slots": ("slot_filling", 0), "topic_mt": ("translation", 0)}


# --- heads ----------------------------------------------------------------------------------------

def _manual_mean(hidden, mask):
    return [[sum(hidden[b][t][k] for t in range(len(mask[b])) if mask[b][t]) / sum(mask[b])
             for k in range(len(hidden[b][0]))] for b in range(len(hidden))]


def test_classification_head_is_a_linear_map_of_the_masked_mean():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    head = ClassificationHead(4, 3)
    pooled = _manual_mean(hidden.tolist(), mask.tolist())
    w, bias = head.weight.tolist(), head.bias.tolist()
    expected = [[sum(w[c][k] * pooled[b][k] for k in range(4)) + bias[c] for c in range(3)] for b in range(3)]
    torch.testing.assert_close(head(hidden, mask), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_multiple_choice_cross_entropy_over_choices_with_padding():
    g = torch.Generator().manual_seed(1)
    examples, choices, seq, d = 2, 4, 6, 5
    hidden = torch.randn(examples * choices, seq, d, generator=g)
    mask = torch.ones(examples * choices, seq, dtype=torch.long)
    mask[1, 4:] = 0                                      # token padding inside a choice
    mask[6, :2] = 0                                      # left padding
    choice_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])   # the second example has 3 options
    labels = torch.tensor([2, 1])
    head = MultipleChoiceHead(d)
    logits = head(hidden, mask, choices, choice_mask)
    assert logits.shape == (2, 4) and logits.dtype == torch.float32 and math.isinf(logits[1, 3].item())
    pooled = _manual_mean(hidden.tolist(), mask.tolist())
    w, bias = head.weight[0].tolist(), head.bias.item()
    scores = [sum(w[k] * pooled[r][k] for k in range(d)) + bias for r in range(examples * choices)]
    total = 0.0
    for e in range(examples):
        valid = [scores[e * choices + c] for c in range(choices) if choice_mask[e, c]]
        total += -(scores[e * choices + labels[e]] - math.log(sum(math.exp(s) for s in valid)))
    loss = classification_loss(logits, labels)
    assert loss.item() == pytest.approx(total / examples, rel=1e-5)
    loss.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()


# --- batches of benchmark examples ----------------------------------------------------------------

def test_collator_embeds_pairs_jointly_and_expands_choices(tiny_path):
    from transformers import AutoTokenizer

    from trainer.data.task import TaskExampleCollator

    tok = AutoTokenizer.from_pretrained(tiny_path("xlmr"))
    collate = TaskExampleCollator(tok, max_length=64)
    nli = [TaskExample("a", "deu_Latn", "test", ("premise one", "hypothesis"), 2),
           TaskExample("b", "deu_Latn", "test", ("premise", "hyp two"), 0)]
    batch = collate(nli)
    assert batch["input_ids"].shape[0] == 2 and batch["labels"].tolist() == [2, 0]
    alone = tok("premise one", "hypothesis")["input_ids"]
    assert batch["input_ids"][0, :len(alone)].tolist() == alone           # one sequence: the text pair
    mc = [TaskExample("c", "eng_Latn", "test", ("passage", "question?"), 1, ("yes", "no", "maybe")),
          TaskExample("d", "eng_Latn", "test", ("passage two", "why?"), 0, ("because", "so"))]
    batch = collate(mc)
    assert batch["input_ids"].shape[0] == 6 and batch["choice_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["input_ids"][1, :len(tok("passage", "question? no")["input_ids"])].tolist() == \
        tok("passage", "question? no")["input_ids"]


# --- S-DEV / T-DEV ----------------------------------------------------------------------------------

def test_selection_takes_each_languages_argmax_and_the_earlier_step_on_ties():
    history = {10: {"eng_Latn": 0.50, "deu_Latn": 0.40, "swh_Latn": 0.30},
               20: {"eng_Latn": 0.70, "deu_Latn": 0.45, "swh_Latn": float("nan")},
               30: {"eng_Latn": 0.70, "deu_Latn": 0.41, "swh_Latn": 0.33},
               40: {"eng_Latn": 0.65, "deu_Latn": 0.45}}
    chosen = select_checkpoints(history, source="eng_Latn")
    assert chosen["s_dev"] == 20                                         # 0.70 at 20 and 30: the earlier
    assert chosen["t_dev"] == {"eng_Latn": 20, "deu_Latn": 20, "swh_Latn": 30}   # NaN never wins
    # against an independent argmax per language
    for lang, step in chosen["t_dev"].items():
        scores = [(history[s][lang], -s) for s in history if lang in history[s] and history[s][lang] == history[s][lang]]
        assert -max(scores)[1] == step
    assert best_step(history, "fra_Latn") is None
    with pytest.raises(ValueError, match="source language fra_Latn"):
        select_checkpoints(history, source="fra_Latn")
