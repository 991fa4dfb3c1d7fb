"""The studies' task benchmarks, each mapped to one schema (`TaskExample`), from the hub or local files.

    examples = load_benchmark("xnli", "de", "validation")                       # the hub (datasets)
    examples = load_benchmark("xnli", "de", "validation", files=["de.jsonl"])   # local files, the same format
    examples[0]  # TaskExample(id="xnli/deu_Latn/validation/0", language="deu_Latn", split="validation",
                 #             texts=(premise, hypothesis), label=0, choices=())
    load_benchmark("wikiann", "en", "train")[0]     # .words ("R.H.", "Saunders", ...), .tags (1, 2, ...)
    load_benchmark("tydiqa", "sw", "test")[0]       # .texts (context, question), .answers (("...", 231),)

Benchmarks (task; hub dataset; the benchmark's own language codes -> FLORES-200):

| name | task | hub | languages |
|---|---|---|---|
| `mnli` | NLI, 3 classes | `nyu-mll/glue` config `mnli` | English only (the training data) |
| `xnli` | NLI, 3 classes | `facebook/xnli`, one config per language | ar bg de el en es fr hi ru sw th tr ur vi zh |
| `americasnli` | NLI, 3 classes | `americas_nli`, one config per language (validation, test) | aym bzd cni gn hch nah oto quy shp tar |
| `kardes_nli` | NLI, 3 classes | none: the release's CSV files (`Data/<language>/xnli.<dev|test>.<code>.csv`) | az kk ky ug uz |
| `indonli` | NLI, 3 classes | `afaji/indonli` (test = `test_lay`) | id |
| `myanmar_xnli` | NLI, 3 classes | `akhtet/myanmar-xnli` (one table, a column pair per language) | my en |
| `afrixnli` | NLI, 3 classes | `masakhane/afrixnli`, one config per language (validation, test; TSV) | 16 African languages, en, fr |
| `nusax_senti` | sentiment, 3 classes | `indonlp/NusaX-senti`, one config per language | ace ban bbc bjn bug eng ind jav mad min nij sun |
| `belebele` | multiple choice, 4 options | `facebook/belebele`, one config per FLORES-style code (test) | its 122 variants, e.g. eng_Latn |
| `topic` | the generated demo task, 3 classes | none: `python -m data_prep.demo_data` writes it | any FLORES code (the demo's ten) |
| `udpos` | POS tagging, 17 UPOS | `google/xtreme` config `udpos.<English name>` (XTREME's UD 2.5) | 33 languages, e.g. English |
| `masakhapos` | POS tagging, 17 UPOS | `masakhane/masakhapos` (or the release's CoNLL files) | 20 African languages |
| `wikiann` | NER, PER/ORG/LOC (IOB2) | `unimelb-nlp/wikiann`, one config per language | its ISO codes (176) |
| `masakhaner` | NER, PER/ORG/LOC/DATE (IOB2) | `masakhane/masakhaner2` (or the release's CoNLL files) | 20 African languages |
| `topic_tags` | the generated tagging task (concept roles, IOB2) | none: `python -m data_prep.demo_data` | any FLORES code |
| `tydiqa` | extractive QA (GoldP) | `google-research-datasets/tydiqa` config `secondary_task` (test = validation) | ar bn en fi id ko ru sw te |
| `topic_qa` | the generated QA task (who did it) | none: `python -m data_prep.demo_data` | any FLORES code |
| `massive` | slot filling, generative (M2) | `AmazonScience/massive`, one config per locale (`en-US`) | its 52 locales |
| `flores` | translation sentences (M2), joined into pairs by `trainer.data.translation_pairs` | `openlanguagedata/flores_plus`, one config per FLORES code (train and validation = dev, test = devtest) | any FLORES code |
| `topic_slots` | the generated slot filling task (MASSIVE's format) | none: `python -m data_prep.demo_data` | any FLORES code |
| `topic_mt` | the generated parallel sentences (FLORES's layout) | none: `python -m data_prep.demo_data` | any FLORES code |

Label ids follow the hub datasets: NLI 0 entailment, 1 neutral, 2 contradiction (label names
in files are mapped the same way); NusaX 0 negative, 1 neutral, 2 positive; Belebele's
`correct_answer_num` "1".."4" becomes the choice index 0..3. Text fields: NLI `(premise,
hypothesis)` (Kardeş-NLU: the translated `s1_translation`, `s2_translation`; Myanmar-XNLI:
`sentence1_<code>`, `sentence2_<code>`), sentiment `(text,)`, Belebele `(flores_passage,
question)` with the four answers as `choices`.

Tagging benchmarks (`pos`, `ner`) give `words` and one tag id per word (`tags`); `texts` is the
words joined by spaces. A tagging benchmark's files may number their tags differently from its
`labels` (`native_tags`): each tag is mapped by name into `labels`, so benchmarks of one task share
one id space and a model trained on one is scored on the other. POS: the 17 UPOS tags in XTREME's
order (`UPOS_TAGS`); MasakhaPOS numbers them as the hub's `universal_dependencies` does (18 names,
`_` at 13: it maps to nothing and is refused). NER: `NER_TAGS` (WikiANN's 7 ids, then MasakhaNER's
B-DATE 7, I-DATE 8), so WikiANN ids are MasakhaNER ids. Tags are ids or names (the releases' CoNLL
files, `.txt`/`.conll`: one `word tag` per line, a blank line between sentences, read as
`{"tokens", "tags"}`). QA (`qa`): `texts` = (context, question), `answers` = (text, character
start) per gold answer, the SQuAD layout (`answers: {text: [...], answer_start: [...]}`).

Languages without an NLLB code (several AmericasNLI and NusaX languages, Ghomálá', Naija) get a
FLORES-style `<iso639-3>_<Script>` code all the same; translation falls back as the translation
issue decides. A label, a tag or a language that does not map is a DataError naming the file (or
hub dataset), the row and the value.

Generative benchmarks (`GENERATIVE`; M2, the `align` recipe) give the gold output as `target`. Slot
filling (`massive`, `topic_slots`): `texts` = (utt,), `target` the study's answer ("time: five am;
date: friday", or "None"), `words` and `word_slots` MASSIVE's evaluation tokens and their slot types
(`trainer.data.slots`). Translation (`flores`, `topic_mt`): one sentence per example (`texts` =
(text,), FLORES's `text` column, or `sentence` as `facebook/flores` names it, or one line of the
release's `<code>.dev`/`.devtest` files); `trainer.data.translation_pairs` joins two languages' sentences
by id into (source, `target`) examples with a `target_language`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.data.files import expand_files, read_jsonl
from trainer.errors import DataError

NLI_LABELS = ("entailment", "neutral", "contradiction")
SENTIMENT_LABELS = ("negative", "neutral", "positive")
# XTREME's udpos ClassLabel (alphabetical): the id space of every POS benchmark
UPOS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
             "SCONJ", "SYM", "VERB", "X")
# the hub's universal_dependencies (and MasakhaPOS) ClassLabel order: 18 names, "_" (no tag) at 13
UD_HUB_TAGS = ("NOUN", "PUNCT", "ADP", "NUM", "SYM", "SCONJ", "ADJ", "PART", "DET", "CCONJ", "PROPN", "PRON", "X",
               "_", "ADV", "INTJ", "VERB", "AUX")
# WikiANN's ClassLabel (ids 0-6), then MasakhaNER's DATE (7, 8): the id space of every NER benchmark
NER_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-DATE", "I-DATE")
# the generated tagging task: each word's concept role (trainer.tiny.text.CONCEPT_ROLES) in IOB2
TOPIC_TAGS = ("O", "B-SUBJ", "I-SUBJ", "B-VERB", "I-VERB", "B-OBJ", "I-OBJ", "B-PLACE", "I-PLACE", "B-TIME",
              "I-TIME")

TAGGING = ("pos", "ner")   # tasks with a tag per word (token classification)
GENERATIVE = ("slot_filling", "translation")   # tasks whose answer is generated text (M2)
QA = ("qa",)               # extractive question answering (a span of the context)
# benchmarks whose own ids name the example's language (TyDiQA-GoldP: `swahili-123-0`; one split holds every
# language): a translation keeps its original's id, so a translated file is read under the original's language
IDS_NAME_LANGUAGE = ("tydiqa",)
NO_LABEL = -1              # `TaskExample.label` of tagging and QA examples (their targets are tags / answers)
CONLL_TAGS = "tags"        # the tag column of records read from CoNLL-style files


@dataclass(frozen=True)
class TaskExample:
    """One example of any benchmark: a stable id, the texts, and the target of its task.

    Classification: `label` (the class, or the index of the right choice, with `choices`). Tagging:
    `words` and `tags` (one tag id per word), `texts` the words joined by spaces. Extractive QA:
    `texts` = (context, question), `answers` = ((text, character start in the context), ...), the first
    being the training target. Tagging and QA examples have `label` -1 (`NO_LABEL`).
    """

    id: str                     # "<benchmark>/<FLORES code>/<split>/<the benchmark's own id or row>"
    language: str               # FLORES-200 code
    split: str                  # train | validation | test
    texts: tuple[str, ...]      # NLI (premise, hypothesis); sentiment (text,); multiple choice (passage, question)
    label: int                  # class id, or the index of the right choice; -1 for tagging and QA
    choices: tuple[str, ...] = ()
    words: tuple[str, ...] = ()                  # tagging: the benchmark's words
    tags: tuple[int, ...] = ()                   # tagging: one tag id per word (`Benchmark.labels` order)
    answers: tuple[tuple[str, int], ...] = ()    # QA: (answer text, its character start in texts[0])
    target: str = ""                             # generative: the gold output text
    target_language: str = ""                    # translation: the FLORES code of `target`
    word_slots: tuple[str, ...] = ()             # slot filling: each of `words`' slot type ("Other" outside)


@dataclass(frozen=True)
class Benchmark:
    name: str
    task: str                                   # nli | sentiment | multiple_choice | classification | pos | ner | qa
    languages: dict[str, str]                   # the benchmark's code -> FLORES-200 code
    convert: Callable[[dict, int, str], dict | None]   # record, row, language code -> raw fields (None: skip)
    labels: tuple[str, ...]                     # label / tag names by id (multiple choice: the choice numbers)
    hub: str | None = None
    hub_config: Callable[[str], str | None] = lambda code: code
    splits: dict[str, str] = field(default_factory=dict)   # our split -> the hub's split name
    native_tags: tuple[str, ...] | None = None  # tagging: the files' tag ids -> names, when they differ from labels

    @property
    def num_labels(self) -> int:
        return len(self.labels)


class _RowError(Exception):
    """A record that does not fit its benchmark; load_benchmark adds the file and row."""


def _nli(premise: str, hypothesis: str, label: str, id_column: str | None = None):
    def convert(record: dict, row: int, code: str) -> dict:
        return {"id": str(record[id_column]) if id_column else str(row),
                "texts": (record[premise], record[hypothesis]), "label": record[label]}
    return convert


def _myanmar_xnli(record: dict, row: int, code: str) -> dict:
    """akhtet/myanmar-xnli: one table with the pair in English and in Myanmar (`sentence1_<code>`, ...)."""
    return {"id": str(row), "texts": (record[f"sentence1_{code}"], record[f"sentence2_{code}"]),
            "label": record["label"]}


def _sentiment(record: dict, row: int, code: str) -> dict:
    return {"id": str(record.get("id", row)), "texts": (record["text"],), "label": record["label"]}


def _belebele(record: dict, row: int, code: str) -> dict:
    choices = tuple(record[f"mc_answer{i}"] for i in range(1, 5))
    number = str(record["correct_answer_num"]).strip()
    label = int(number) - 1 if number in ("1", "2", "3", "4") else number   # else: reported as it is
    return {"id": f"{record['link']}#{record['question_number']}",
            "texts": (record["flores_passage"], record["question"]), "label": label, "choices": choices}


def _race(record: dict, row: int, code: str) -> dict:
    # several questions share an article's example_id: the row keeps each question's id apart
    answer = str(record["answer"]).strip()
    label = "ABCD".index(answer) if answer in ("A", "B", "C", "D") else answer   # else: reported as it is
    return {"id": f"{record['example_id']}#{row}", "texts": (record["article"], record["question"]),
            "label": label, "choices": tuple(record["options"])}


def _tagging(tag_column: str, id_column: str | None = None, langs: bool = False):
    """`tokens` + `tag_column` (CoNLL files: `tags`); `langs`: WikiANN's per-token language column must be `code`."""
    def convert(record: dict, row: int, code: str) -> dict:
        column = tag_column if tag_column in record or CONLL_TAGS not in record else CONLL_TAGS
        if langs and "langs" in record:
            other = next((lang for lang in record["langs"] if lang != code), None)
            if other is not None:
                raise _RowError(f"language {other!r} in column 'langs', but this is the {code!r} set")
        native = record[id_column] if id_column and id_column in record else row
        return {"id": str(native), "words": record["tokens"], "tags": record[column]}
    return convert


TYDIQA_NAMES = {"ar": "arabic", "bn": "bengali", "en": "english", "fi": "finnish", "id": "indonesian",
                "ko": "korean", "ru": "russian", "sw": "swahili", "te": "telugu"}


def _squad(record: dict, row: int, code: str) -> dict:
    """The SQuAD layout: id, context, question, answers {text: [...], answer_start: [...]}."""
    answers = record["answers"]
    if not isinstance(answers, dict) or len(answers.get("text", ())) != len(answers.get("answer_start", ())):
        raise _RowError(f"answers {answers!r} is not {{text: [...], answer_start: [...]}} of equal lengths")
    return {"id": str(record["id"]), "texts": (record["context"], record["question"]),
            "answers": list(zip(answers["text"], answers["answer_start"]))}


def _tydiqa(record: dict, row: int, code: str) -> dict | None:
    """TyDiQA-GoldP in the SQuAD layout; its ids start with the language's name (`swahili-123-0`): one split
    holds every language, so the other languages' rows are skipped."""
    name = str(record["id"]).split("-", 1)[0]
    if name not in TYDIQA_NAMES.values():
        raise _RowError(f"id {str(record['id'])!r}: language {name!r} is not a TyDiQA-GoldP language "
                        f"({', '.join(TYDIQA_NAMES.values())})")
    return _squad(record, row, code) if name == TYDIQA_NAMES[code] else None


def _massive(record: dict, row: int, code: str) -> dict:
    """MASSIVE's `id`, `utt`, `annot_utt` (inline `[type : value]` slots; `trainer.data.slots`)."""
    from trainer.data.slots import annotated_words, slot_answer
    from trainer.languages.segmentation import splits_by_character

    flores = MASSIVE_LANGUAGES.get(code, code)
    words, slots = annotated_words(record["annot_utt"], splits_by_character(flores), record["utt"])
    return {"id": str(record["id"]), "texts": (record["utt"],), "target": slot_answer(record["annot_utt"]),
            "words": words, "word_slots": slots}


def _sentence(record: dict, row: int, code: str) -> dict:
    """One FLORES sentence: `id` and `text` (FLORES+), `sentence` (facebook/flores); plain lines: the line number."""
    text = record["sentence"] if "sentence" in record and "text" not in record else record["text"]
    return {"id": str(record.get("id", row)), "texts": (text,)}


# FLORES+ renamed Mandarin's configs (cmn_*); the other FLORES-200 codes are its config names
FLORES_PLUS_CONFIGS = {"zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant"}
# MASSIVE 1.1's 52 locales
MASSIVE_LANGUAGES = {"af-ZA": "afr_Latn", "am-ET": "amh_Ethi", "ar-SA": "arb_Arab", "az-AZ": "azj_Latn",
                     "bn-BD": "ben_Beng", "ca-ES": "cat_Latn", "cy-GB": "cym_Latn", "da-DK": "dan_Latn",
                     "de-DE": "deu_Latn", "el-GR": "ell_Grek", "en-US": "eng_Latn", "es-ES": "spa_Latn",
                     "fa-IR": "pes_Arab", "fi-FI": "fin_Latn", "fr-FR": "fra_Latn", "he-IL": "heb_Hebr",
                     "hi-IN": "hin_Deva", "hu-HU": "hun_Latn", "hy-AM": "hye_Armn", "id-ID": "ind_Latn",
                     "is-IS": "isl_Latn", "it-IT": "ita_Latn", "ja-JP": "jpn_Jpan", "jv-ID": "jav_Latn",
                     "ka-GE": "kat_Geor", "km-KH": "khm_Khmr", "kn-IN": "kan_Knda", "ko-KR": "kor_Hang",
                     "lv-LV": "lvs_Latn", "ml-IN": "mal_Mlym", "mn-MN": "khk_Cyrl", "ms-MY": "zsm_Latn",
                     "my-MM": "mya_Mymr", "nb-NO": "nob_Latn", "nl-NL": "nld_Latn", "pl-PL": "pol_Latn",
                     "pt-PT": "por_Latn", "ro-RO": "ron_Latn", "ru-RU": "rus_Cyrl", "sl-SL": "slv_Latn",
                     "sq-AL": "als_Latn", "sv-SE": "swe_Latn", "sw-KE": "swh_Latn", "ta-IN": "tam_Taml",
                     "te-IN": "tel_Telu", "th-TH": "tha_Thai", "tl-PH": "tgl_Latn", "tr-TR": "tur_Latn",
                     "ur-PK": "urd_Arab", "vi-VN": "vie_Latn", "zh-CN": "zho_Hans", "zh-TW": "zho_Hant"}
XNLI_LANGUAGES = {"ar": "arb_Arab", "bg": "bul_Cyrl", "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn",
                  "es": "spa_Latn", "fr": "fra_Latn", "hi": "hin_Deva", "ru": "rus_Cyrl", "sw": "swh_Latn",
                  "th": "tha_Thai", "tr": "tur_Latn", "ur": "urd_Arab", "vi": "vie_Latn", "zh": "zho_Hans"}
AMERICASNLI_LANGUAGES = {"aym": "ayr_Latn", "bzd": "bzd_Latn", "cni": "cni_Latn", "gn": "grn_Latn",
                         "hch": "hch_Latn", "nah": "nah_Latn", "oto": "oto_Latn", "quy": "quy_Latn",
                         "shp": "shp_Latn", "tar": "tar_Latn"}
KARDES_LANGUAGES = {"az": "azj_Latn", "kk": "kaz_Cyrl", "ky": "kir_Cyrl", "ug": "uig_Arab", "uz": "uzn_Latn"}
NUSAX_LANGUAGES = {"ace": "ace_Latn", "ban": "ban_Latn", "bbc": "bbc_Latn", "bjn": "bjn_Latn", "bug": "bug_Latn",
                   "eng": "eng_Latn", "ind": "ind_Latn", "jav": "jav_Latn", "mad": "mad_Latn", "min": "min_Latn",
                   "nij": "nij_Latn", "sun": "sun_Latn"}
AFRIXNLI_LANGUAGES = {"amh": "amh_Ethi", "eng": "eng_Latn", "ewe": "ewe_Latn", "fra": "fra_Latn", "hau": "hau_Latn",
                      "ibo": "ibo_Latn", "kin": "kin_Latn", "lin": "lin_Latn", "lug": "lug_Latn", "orm": "gaz_Latn",
                      "sna": "sna_Latn", "sot": "sot_Latn", "swa": "swh_Latn", "twi": "twi_Latn", "wol": "wol_Latn",
                      "xho": "xho_Latn", "yor": "yor_Latn", "zul": "zul_Latn"}
# MasakhaNER 2.0 and MasakhaPOS share their 20 languages (ISO 639-3 configs); Ghomálá' and Naija have no NLLB code
MASAKHANE_LANGUAGES = {"bam": "bam_Latn", "bbj": "bbj_Latn", "ewe": "ewe_Latn", "fon": "fon_Latn", "hau": "hau_Latn",
                       "ibo": "ibo_Latn", "kin": "kin_Latn", "lug": "lug_Latn", "luo": "luo_Latn", "mos": "mos_Latn",
                       "nya": "nya_Latn", "pcm": "pcm_Latn", "sna": "sna_Latn", "swa": "swh_Latn", "tsn": "tsn_Latn",
                       "twi": "twi_Latn", "wol": "wol_Latn", "xho": "xho_Latn", "yor": "yor_Latn", "zul": "zul_Latn"}
# XTREME's udpos configs (`udpos.<name>`, UD 2.5); its Chinese treebanks are in traditional characters
UDPOS_LANGUAGES = {"Afrikaans": "afr_Latn", "Arabic": "arb_Arab", "Basque": "eus_Latn", "Bulgarian": "bul_Cyrl",
                   "Chinese": "zho_Hant", "Dutch": "nld_Latn", "English": "eng_Latn", "Estonian": "est_Latn",
                   "Finnish": "fin_Latn", "French": "fra_Latn", "German": "deu_Latn", "Greek": "ell_Grek",
                   "Hebrew": "heb_Hebr", "Hindi": "hin_Deva", "Hungarian": "hun_Latn", "Indonesian": "ind_Latn",
                   "Italian": "ita_Latn", "Japanese": "jpn_Jpan", "Kazakh": "kaz_Cyrl", "Korean": "kor_Hang",
                   "Marathi": "mar_Deva", "Persian": "pes_Arab", "Portuguese": "por_Latn", "Russian": "rus_Cyrl",
                   "Spanish": "spa_Latn", "Tagalog": "tgl_Latn", "Tamil": "tam_Taml", "Telugu": "tel_Telu",
                   "Thai": "tha_Thai", "Turkish": "tur_Latn", "Urdu": "urd_Arab", "Vietnamese": "vie_Latn",
                   "Yoruba": "yor_Latn"}
# XTREME's 40 PAN-X languages; WikiANN's other configs resolve through the language table (ISO 639 codes)
WIKIANN_LANGUAGES = {"af": "afr_Latn", "ar": "arb_Arab", "bg": "bul_Cyrl", "bn": "ben_Beng", "de": "deu_Latn",
                     "el": "ell_Grek", "en": "eng_Latn", "es": "spa_Latn", "et": "est_Latn", "eu": "eus_Latn",
                     "fa": "pes_Arab", "fi": "fin_Latn", "fr": "fra_Latn", "he": "heb_Hebr", "hi": "hin_Deva",
                     "hu": "hun_Latn", "id": "ind_Latn", "it": "ita_Latn", "ja": "jpn_Jpan", "jv": "jav_Latn",
                     "ka": "kat_Geor", "kk": "kaz_Cyrl", "ko": "kor_Hang", "ml": "mal_Mlym", "mr": "mar_Deva",
                     "ms": "zsm_Latn", "my": "mya_Mymr", "nl": "nld_Latn", "pt": "por_Latn", "ru": "rus_Cyrl",
                     "sw": "swh_Latn", "ta": "tam_Taml", "te": "tel_Telu", "th": "tha_Thai", "tl": "tgl_Latn",
                     "tr": "tur_Latn", "ur": "urd_Arab", "vi": "vie_Latn", "yo": "yor_Latn", "zh": "zho_Hans"}
TYDIQA_LANGUAGES = {"ar": "arb_Arab", "bn": "ben_Beng", "en": "eng_Latn", "fi": "fin_Latn", "id": "ind_Latn",
                    "ko": "kor_Hang", "ru": "rus_Cyrl", "sw": "swh_Latn", "te": "tel_Telu"}


class _FloresCodes(dict):
    """Languages named by FLORES-style codes already (Belebele's configs, the generated task): each maps to itself."""

    def __missing__(self, code: str) -> str:
        if len(code.split("_")) == 2 and len(code.split("_")[1]) == 4:
            return code
        raise KeyError(code)

    def __contains__(self, code: object) -> bool:
        try:
            self[code]
        except KeyError:
            return False
        return True


class _TableCodes(_FloresCodes):
    """The listed codes, and any other ISO 639 code the language table resolves (WikiANN's 176 configs)."""

    def __missing__(self, code: str) -> str:
        from trainer.languages.table import UnknownLanguageError, language_table

        if not isinstance(code, str) or "_" in code:
            raise KeyError(code)
        try:
            return language_table().flores(code)
        except UnknownLanguageError:   # not one of the benchmark's languages
            raise KeyError(code) from None


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("mnli", "nli", {"en": "eng_Latn"}, _nli("premise", "hypothesis", "label", "idx"), NLI_LABELS,
              hub="nyu-mll/glue", hub_config=lambda code: "mnli",
              splits={"train": "train", "validation": "validation_matched", "test": "validation_mismatched"}),
    Benchmark("xnli", "nli", XNLI_LANGUAGES, _nli("premise", "hypothesis", "label"), NLI_LABELS, hub="facebook/xnli"),
    Benchmark("americasnli", "nli", AMERICASNLI_LANGUAGES, _nli("premise", "hypothesis", "label"), NLI_LABELS,
              hub="americas_nli"),
    Benchmark("kardes_nli", "nli", KARDES_LANGUAGES,
              _nli("s1_translation", "s2_translation", "gold_label", "Unnamed: 0"), NLI_LABELS,
              splits={"validation": "dev", "test": "test"}),
    Benchmark("indonli", "nli", {"id": "ind_Latn"}, _nli("premise", "hypothesis", "label"), NLI_LABELS,
              hub="afaji/indonli", hub_config=lambda code: None, splits={"test": "test_lay"}),
    Benchmark("myanmar_xnli", "nli", {"my": "mya_Mymr", "en": "eng_Latn"}, _myanmar_xnli, NLI_LABELS,
              hub="akhtet/myanmar-xnli", hub_config=lambda code: None),
    Benchmark("afrixnli", "nli", AFRIXNLI_LANGUAGES, _nli("premise", "hypothesis", "label"), NLI_LABELS,
              hub="masakhane/afrixnli"),
    Benchmark("nusax_senti", "sentiment", NUSAX_LANGUAGES, _sentiment, SENTIMENT_LABELS, hub="indonlp/NusaX-senti"),
    Benchmark("belebele", "multiple_choice", _FloresCodes(), _belebele, ("1", "2", "3", "4"),
              hub="facebook/belebele", splits={"validation": "test", "test": "test"}),   # no dev split: test
    Benchmark("race", "multiple_choice", {"en": "eng_Latn"}, _race, ("1", "2", "3", "4"), hub="ehovy/race",
              hub_config=lambda code: "all"),
    Benchmark("topic", "classification", _FloresCodes(), _sentiment, ("perception", "commerce", "making")),
    Benchmark("udpos", "pos", UDPOS_LANGUAGES, _tagging("pos_tags"), UPOS_TAGS, hub="google/xtreme",
              hub_config=lambda code: f"udpos.{code}"),
    Benchmark("masakhapos", "pos", MASAKHANE_LANGUAGES, _tagging("upos", "id"), UPOS_TAGS,
              hub="masakhane/masakhapos", native_tags=UD_HUB_TAGS),
    Benchmark("wikiann", "ner", _TableCodes(WIKIANN_LANGUAGES), _tagging("ner_tags", langs=True), NER_TAGS[:7],
              hub="unimelb-nlp/wikiann"),
    Benchmark("masakhaner", "ner", MASAKHANE_LANGUAGES, _tagging("ner_tags", "id"), NER_TAGS,
              hub="masakhane/masakhaner2"),
    Benchmark("topic_tags", "ner", _FloresCodes(), _tagging("tags", "id"), TOPIC_TAGS),
    Benchmark("tydiqa", "qa", TYDIQA_LANGUAGES, _tydiqa, (), hub="google-research-datasets/tydiqa",
              hub_config=lambda code: "secondary_task", splits={"test": "validation"}),
    Benchmark("topic_qa", "qa", _FloresCodes(), _squad, ()),
    Benchmark("massive", "slot_filling", MASSIVE_LANGUAGES, _massive, (), hub="AmazonScience/massive"),
    Benchmark("flores", "translation", _FloresCodes(), _sentence, (), hub="openlanguagedata/flores_plus",
              hub_config=lambda code: FLORES_PLUS_CONFIGS.get(code, code),
              splits={"train": "dev", "validation": "dev", "test": "devtest"}),
    Benchmark("topic_slots", "slot_filling", _FloresCodes(), _massive, ()),
    Benchmark("topic_mt", "translation", _FloresCodes(), _sentence, ()),
]}


def _label_id(value: Any, labels: tuple[str, ...], where: str) -> int:
    """An integer id in range, or a label name -> its id; anything else names `where` and the value."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int) and 0 <= value < len(labels):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and 0 <= int(text) < len(labels):
            return int(text)
        if text.lower() in labels:
            return labels.index(text.lower())
    raise DataError(f"{where}: label {value!r} does not map to {', '.join(f'{i} {n}' for i, n in enumerate(labels))}")


def _tag_ids(benchmark: Benchmark, words: tuple[str, ...], values: Any, where: str) -> tuple[int, ...]:
    """The files' tags (ids in `native_tags` or `labels` order, or names) -> ids in `labels` order."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != len(words):
        raise DataError(f"{where}: {len(words)} words but tags {values!r}")
    native = benchmark.native_tags or benchmark.labels
    ids = []
    for i, value in enumerate(values):
        name = None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(native):
            name = native[value]
        elif isinstance(value, str):
            text = value.strip()
            name = native[int(text)] if text.isdigit() and int(text) < len(native) else text.upper()
        if name not in benchmark.labels:
            raise DataError(f"{where}: tag {value!r} of word {i + 1} ({words[i]!r}) does not map to "
                            f"{', '.join(f'{j} {n}' for j, n in enumerate(benchmark.labels))}")
        ids.append(benchmark.labels.index(name))
    return tuple(ids)


def _answers(values: Any, where: str) -> tuple[tuple[str, int], ...]:
    answers = []
    for text, start in values:
        if isinstance(start, bool) or not str(start).strip().isdigit():
            raise DataError(f"{where}: answer_start {start!r} of answer {text!r} is not a character offset")
        answers.append((str(text), int(str(start).strip())))
    return tuple(answers)


def _read_conll(path: str) -> list[dict]:
    """CoNLL-style tagging files: `word ... tag` per line (first and last whitespace-separated fields), a blank
    line between sentences, `-DOCSTART-` lines skipped -> {"id", "tokens", "tags"} per sentence."""
    records, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if fields and fields[0] == "-DOCSTART-":
                continue
            if not fields:
                if words:
                    records.append({"id": str(len(records)), "tokens": words, CONLL_TAGS: tags})
                words, tags = [], []
                continue
            if len(fields) < 2:
                raise DataError(f"{path}:{n}: {line.strip()!r} is not 'word tag'")
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        records.append({"id": str(len(records)), "tokens": words, CONLL_TAGS: tags})
    return records


def _read_records(path: str) -> list[dict]:
    if path.endswith(".jsonl") or path.endswith(".json"):
        return read_jsonl(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.endswith((".csv", ".tsv")):
        with open(path, encoding="utf-8", newline="") as f:
            if path.endswith(".tsv"):   # TSV releases (AfriXNLI) do not quote: a quote is text
                return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            return list(csv.DictReader(f))
    if path.endswith((".txt", ".conll")):
        return _read_conll(path)
    if path.endswith((".dev", ".devtest")):   # the FLORES-200 release: one sentence a line, the line number its id
        with open(path, encoding="utf-8") as f:
            return [{"id": str(n), "text": line.rstrip("\n")} for n, line in enumerate(f, 1)]
    raise DataError(f"{path}: a benchmark file is .jsonl, .parquet, .csv, .tsv, (tagging) CoNLL .txt/.conll or "
                    f"(FLORES) .dev/.devtest")


def _hub_records(benchmark: Benchmark, code: str, split: str) -> Iterable[dict]:
    import datasets

    return datasets.load_dataset(benchmark.hub, benchmark.hub_config(code), split=benchmark.splits.get(split, split))


def _example(benchmark: Benchmark, flores: str, split: str, raw: dict, where: str) -> TaskExample:
    """The converted fields of one record as a `TaskExample` of `benchmark`'s task."""
    example_id = f"{benchmark.name}/{flores}/{split}/{raw['id']}"
    if benchmark.task in TAGGING:
        words = tuple(str(w) for w in raw["words"])
        return TaskExample(example_id, flores, split, (" ".join(words),), NO_LABEL, words=words,
                           tags=_tag_ids(benchmark, words, raw["tags"], where))
    texts = tuple(str(t) for t in raw["texts"])
    if benchmark.task in GENERATIVE:
        return TaskExample(example_id, flores, split, texts, NO_LABEL, target=raw.get("target", ""),
                           words=tuple(raw.get("words", ())), word_slots=tuple(raw.get("word_slots", ())))
    if benchmark.task in QA:
        return TaskExample(example_id, flores, split, texts, NO_LABEL, answers=_answers(raw["answers"], where))
    return TaskExample(example_id, flores, split, texts, _label_id(raw["label"], benchmark.labels, where),
                       tuple(str(c) for c in raw.get("choices", ())))


def has_language(name: str, language: str) -> bool:
    """Whether benchmark `name` has `language` (its own code or its FLORES code)."""
    languages = BENCHMARKS[name].languages
    return language in languages or language in languages.values()


def load_benchmark(name: str, language: str, split: str, files: list[str] | None = None) -> list[TaskExample]:
    """Every example of benchmark `name` in `language` (the benchmark's code or its FLORES code) and `split`.

    `files`: local files or globs in the benchmark's own format; without them the hub dataset is
    loaded through `datasets` (the benchmark's hub name and config).
    """
    if name not in BENCHMARKS:
        raise DataError(f"benchmark {name!r} is unknown; choose one of {', '.join(BENCHMARKS)}")
    benchmark = BENCHMARKS[name]
    codes = {flores: code for code, flores in benchmark.languages.items()}
    code = codes.get(language, language)
    if code not in benchmark.languages:
        raise DataError(f"{name}: language {language!r} is not one of its languages "
                        f"({', '.join(benchmark.languages) or 'FLORES-style codes such as eng_Latn'})")
    flores = benchmark.languages[code]
    if files:
        sources = [(path, _read_records(path)) for path in expand_files(files, what=f"{name} files")]
    elif benchmark.hub is None:
        raise DataError(f"{name}: not on the hub; give its files (e.g. Data/<language>/xnli.dev.<code>.csv of the "
                        f"release)")
    else:
        sources = [(f"{benchmark.hub} ({benchmark.hub_config(code)}, {split})", _hub_records(benchmark, code, split))]
    examples = []
    for source, records in sources:
        for row, record in enumerate(records, 1):
            where = f"{source}: row {row}"
            try:
                raw = benchmark.convert(record, row, code)
            except KeyError as e:
                raise DataError(f"{where}: no column {e.args[0]!r} (columns: {', '.join(record)})") from None
            except _RowError as e:
                raise DataError(f"{where}: {e}") from None
            if raw is not None:
                examples.append(_example(benchmark, flores, split, raw, where))
    if not examples:
        raise DataError(f"{name} {language} {split}: no examples")
    return examples
