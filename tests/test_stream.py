"""Streaming reader: exact coverage over ranks and workers, exact resume (twice), dual views, shard errors."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from trainer.config import ConfigError, TextDataConfig, validate
from trainer.data.batches import MicroBatches
from trainer.data.chunking import DualChunker
from trainer.data.shards import Manifest, ShardError, ShardInfo, save_manifest, sha256_file
from trainer.data.stream import StreamConfig, StreamLoader, epoch_order
from trainer.data.text import text_batches
from trainer.tiny.text import english_documents

MAX_LENGTH = 24
SHARD_SIZES = [13, 40, 1, 27, 9]  # deliberately uneven


def squash(text: str) -> str:
    """Whitespace-insensitive form: chunk cuts may fall where the document had spaces."""
    return "".join(text.split())


def normalise(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def tokenizers(tiny_path):
    llm = AutoTokenizer.from_pretrained(tiny_path("llama"))
    nllb = AutoTokenizer.from_pretrained(tiny_path("nllb"), src_lang="eng_Latn")
    return llm, nllb


def make_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = english_documents(n, seed=seed, min_sentences=1, max_sentences=9)
    docs[3] = ""  # blank documents give no chunk but must not break the bookkeeping
    docs[7] = "   "
    docs[11] = docs[11] + " " + "qz" * 40  # an over-long "word"
    for i in rng.sample(range(n), 5):
        docs[i] = docs[i].replace(". ", ".  ", 1)  # irregular spacing
    return docs


def write_shard_set(root, docs: list[str], sizes: list[int], column: str = "text"):
    """Shards of the given sizes plus a manifest, written directly (the CLI is tested elsewhere)."""
    root.mkdir(parents=True, exist_ok=True)
    infos, start = [], 0
    for i, size in enumerate(sizes):
        path = root / f"part-{i}.parquet"
        pq.write_table(pa.table({column: docs[start:start + size]}), path)
        infos.append(ShardInfo(path=path.name, rows=size, tokens=0, sha256=sha256_file(path),
                               source_start=start, source_end=start + size))
        start += size
    manifest = Manifest(text_column="text", shards=infos)
    return save_manifest(manifest, root / "manifest.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = make_docs(sum(SHARD_SIZES), seed=5)
    manifest = write_shard_set(tmp_path_factory.mktemp("shards"), docs, SHARD_SIZES)
    return docs, str(manifest)


def config(manifest: str, **kw) -> StreamConfig:
    base = dict(manifest=manifest, max_length=MAX_LENGTH, shuffle_window=16, pool_batches=3, return_text=True)
    return StreamConfig(**{**base, **kw})


def keys(batch) -> list[tuple[int, int]]:
    return list(zip(batch["doc_index"].tolist(), batch["chunk_index"].tolist()))


def run_all(cfg: StreamConfig, tokenizers, world: int, batch_size: int = 4, seed: int = 0):
    """All examples of one epoch over every rank: (doc, chunk) -> text."""
    seen: list[tuple[int, int, str]] = []
    for rank in range(world):
        loader = StreamLoader(cfg, *tokenizers, batch_size=batch_size, rank=rank, world_size=world, seed=seed)
        for batch in loader:
            seen += [(d, c, t) for (d, c), t in zip(keys(batch), batch["text"])]
    return seen


def check_exact_cover(seen, docs):
    ids = [(d, c) for d, c, _ in seen]
    assert len(ids) == len(set(ids)), "an example was produced twice"
    by_doc: dict[int, dict[int, str]] = {}
    for d, c, t in seen:
        by_doc.setdefault(d, {})[c] = t
    assert set(by_doc) == {i for i, d in enumerate(docs) if d.strip()}, "documents missing or extra"
    for d, chunks in by_doc.items():
        assert sorted(chunks) == list(range(len(chunks))), f"doc {d}: a chunk is missing"
        assert squash("".join(chunks[c] for c in sorted(chunks))) == squash(docs[d]), f"doc {d}: text lost"


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("consumers", [None, 12])
def test_one_epoch_covers_every_document_exactly_once(corpus, tokenizers, world, workers, consumers):
    docs, manifest = corpus
    seen = run_all(config(manifest, epochs=1, num_workers=workers, consumers=consumers), tokenizers, world)
    check_exact_cover(seen, docs)


def test_fixed_consumers_give_the_same_global_batches_for_every_launch_shape(corpus, tokenizers):
    """Global micro-batch k goes to rank k % world and is the same batch for any world size and worker count."""
    _, manifest = corpus
    cfg = config(manifest, length_bucketing=True)
    total = 36  # endless stream; crosses an epoch boundary

    def rank_batches(world, rank, workers, consumers=6):
        loader = StreamLoader(cfg.model_copy(update={"num_workers": workers, "consumers": consumers}), *tokenizers,
                              batch_size=3,
                              rank=rank, world_size=world, seed=1)
        out = []
        for batch in itertools.islice(loader, total // world):
            out.append(keys(batch))
            assert loader.last_index == rank + world * (len(out) - 1)
        return out

    single = rank_batches(1, 0, 0)
    assert len(set(map(tuple, single))) == total
    for world, workers in [(1, 2), (2, 0), (3, 2), (6, 0)]:
        per_rank = [rank_batches(world, r, workers) for r in range(world)]
        assert [per_rank[k % world][k // world] for k in range(total)] == single, (world, workers)
    auto = [rank_batches(2, r, 0, None) for r in range(2)]  # consumers unset: one per process, another sequence
    assert [auto[k % 2][k // 2] for k in range(total)] != single


def test_consumers_must_be_a_multiple_of_the_processes(corpus, tokenizers):
    with pytest.raises(ValueError, match=r"consumers=6 .* not a multiple of world_size x max.1, num_workers. = 2 x 2"):
        StreamLoader(config(corpus[1], consumers=6, num_workers=2), *tokenizers, batch_size=3, world_size=2)


def materialise(batch) -> dict:
    return {k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in batch.items()}


@pytest.mark.parametrize("consumers,workers,stops", [(None, 0, (5, 9)), (None, 2, (3, 8)), (8, 2, (4, 7)),
                                                     (8, 0, (1, 10))])
def test_resume_twice_gives_the_uninterrupted_batches(corpus, tokenizers, consumers, workers, stops):
    """Stop, resume from state_dict (through JSON), stop again, resume again: same batches as one run.

    The stream is endless here (epochs=None) and the run crosses epoch boundaries.
    """
    _, manifest = corpus
    cfg = config(manifest, consumers=consumers, num_workers=workers, length_bucketing=consumers is not None)
    make = lambda: StreamLoader(cfg, *tokenizers, batch_size=4, rank=1, world_size=2, seed=7)  # noqa: E731
    total = 40
    full = [materialise(b) for b in itertools.islice(make(), total)]
    assert len(full) == total

    got, state, start = [], None, 0
    for stop in (*stops, total):
        loader = make()
        if state is not None:
            loader.load_state_dict(json.loads(json.dumps(state)))
        got += [materialise(b) for b in itertools.islice(loader, stop - start)]
        state, start = loader.state_dict(), stop
        assert loader.last_index == 1 + 2 * (stop - 1)
    assert got == full
    assert max(s["epoch"] for s in state["states"] if s) >= 1, "the run should cross an epoch boundary"


def test_state_is_bound_to_its_settings(corpus, tokenizers):
    _, manifest = corpus
    loader = StreamLoader(config(manifest), *tokenizers, batch_size=4, rank=0, world_size=2)
    next(iter(loader))
    state = loader.state_dict()
    other = StreamLoader(config(manifest), *tokenizers, batch_size=4, rank=0, world_size=3)
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(state)


def test_order_is_seeded_and_changes_with_epoch(corpus, tokenizers):
    _, manifest = corpus

    def first(seed, n=6):
        loader = StreamLoader(config(manifest), *tokenizers, batch_size=4, seed=seed)
        return [keys(b) for b in itertools.islice(loader, n)]

    assert first(0) == first(0)
    assert first(0) != first(1)
    rows = SHARD_SIZES
    assert sorted(epoch_order(rows, 0, 0).tolist()) == list(range(sum(rows)))
    assert not np.array_equal(epoch_order(rows, 0, 0), epoch_order(rows, 0, 1))
    assert epoch_order(rows, 0, 0, shuffle=False).tolist() == list(range(sum(rows)))


@pytest.mark.parametrize("llm_side", ["right", "left"])
def test_both_views_cover_the_same_span_within_max_length(corpus, tokenizers, llm_side):
    _, manifest = corpus
    llm, nllb = tokenizers
    llm = AutoTokenizer.from_pretrained(llm.name_or_path)
    llm.padding_side = llm_side
    loader = StreamLoader(config(manifest, epochs=1), llm, nllb, batch_size=5)
    lang = nllb.convert_tokens_to_ids("eng_Latn")
    n_examples = 0
    for batch in loader:
        for view in ("llm", "nllb"):
            ids, mask = batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"]
            assert ids.shape == mask.shape and ids.shape[1] <= MAX_LENGTH
            assert mask.sum(1).max() == ids.shape[1], "padding is to the longest in the batch"
        for i, text in enumerate(batch["text"]):
            llm_ids = batch["llm_input_ids"][i][batch["llm_attention_mask"][i].bool()].tolist()
            nllb_ids = batch["nllb_input_ids"][i][batch["nllb_attention_mask"][i].bool()].tolist()
            assert llm_ids[0] == llm.bos_token_id
            assert nllb_ids[0] == lang and nllb_ids[-1] == nllb.eos_token_id
            assert normalise(llm.decode(llm_ids, skip_special_tokens=True)) == normalise(text)
            assert normalise(nllb.decode(nllb_ids, skip_special_tokens=True)) == normalise(text)
            n_examples += 1
        mask = batch["llm_attention_mask"]
        edge = mask[:, -1] if llm_side == "left" else mask[:, 0]
        assert bool(edge.all()), f"padding must be on the {llm_side}"
    assert n_examples > sum(SHARD_SIZES), "documents longer than max_length must give several chunks"


def test_chunker_packs_greedily_and_hard_splits_long_words(tokenizers):
    chunker = DualChunker(*tokenizers, max_length=MAX_LENGTH)
    doc = " ".join(english_documents(6, seed=3, min_sentences=8, max_sentences=8))
    chunks = chunker.chunk(doc)
    assert squash("".join(c.text for c in chunks)) == squash(doc)
    assert len(chunks) > 3
    for a, b in zip(chunks, chunks[1:]):
        size = max(len(a.llm_ids), len(a.nllb_ids))
        assert MAX_LENGTH // 2 <= size <= MAX_LENGTH, "chunks are packed, not one sentence each"
        # greedy: a chunk ends at a sentence end, or the next word would not have fitted
        if a.text[-1] not in ".!?":
            longer = chunker.chunk(a.text + " " + b.text.split()[0])
            assert len(longer) > 1 or max(len(longer[0].llm_ids), len(longer[0].nllb_ids)) > MAX_LENGTH
    word = "".join(random.Random(0).choice("qxzvkwj") for _ in range(150))
    pieces = chunker._hard_split(word, 0, len(word))  # the fallback when no common boundary fits
    assert len(pieces) > 1 and "".join(p.text for p in pieces) == word
    llm, nllb = tokenizers
    for p in pieces:
        assert len(p.llm_ids) <= MAX_LENGTH and len(p.nllb_ids) <= MAX_LENGTH
        assert llm.decode(p.llm_ids, skip_special_tokens=True).strip() == p.text
        assert nllb.decode(p.nllb_ids, skip_special_tokens=True).strip() == p.text


def test_corrupt_shard_fails_naming_the_file(tmp_path, tokenizers):
    docs = make_docs(30, seed=2)
    manifest = write_shard_set(tmp_path / "s", docs, [10, 20])
    bad = tmp_path / "s" / "part-1.parquet"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    for workers in (0, 1):
        loader = StreamLoader(config(str(manifest), epochs=1, num_workers=workers, shuffle=False), *tokenizers,
                              batch_size=4)
        with pytest.raises(Exception, match="part-1.parquet.*checksum mismatch") as err:
            list(loader)
        assert workers == 1 or isinstance(err.value, ShardError)


def test_missing_text_column_fails_naming_file_and_column(tmp_path, tokenizers):
    root = tmp_path / "s"
    write_shard_set(root, make_docs(20, seed=1)[:10], [10])
    manifest = write_shard_set(root, make_docs(20, seed=1)[:10], [10], column="body")  # checksum is right
    loader = StreamLoader(config(str(manifest), epochs=1), *tokenizers, batch_size=4)
    with pytest.raises(ShardError, match=r"part-0.parquet: no column 'text'.*columns: body"):
        next(iter(loader))


def test_missing_shard_is_reported_by_name(tmp_path, tokenizers):
    manifest = write_shard_set(tmp_path / "s", make_docs(30, seed=2), [10, 10, 10])
    (tmp_path / "s" / "part-2.parquet").unlink()
    with pytest.raises(ShardError, match="missing: part-2.parquet"):
        StreamLoader(config(str(manifest)), *tokenizers, batch_size=4)


def test_config_rejects_unknown_keys(corpus):
    with pytest.raises(ValueError, match="extra"):
        StreamConfig(manifest=corpus[1], max_lenght=8)


# ---------------------------------------------------------------- the job's data section and the factory


def test_text_batches_gives_the_same_examples_per_step_for_one_rank_x2_and_two_ranks_x1(corpus, tokenizers):
    """The recipe's contract: global micro-batch k on rank k % world, same examples per optimizer step."""
    _, manifest = corpus
    cfg = TextDataConfig(manifest=manifest, max_length=MAX_LENGTH, consumers=2, shuffle_window=16)

    def steps(world, accum, n_steps=6):
        loaders = [text_batches(cfg, 4, *tokenizers, seed=3, rank=r, world_size=world) for r in range(world)]
        out = []
        for _ in range(n_steps):
            rows, indices = [], []
            for loader in loaders:
                for _ in range(accum):
                    batch = next(loader)
                    indices.append(loader.last_index)
                    ids, mask = batch["llm_input_ids"], batch["llm_attention_mask"].bool()
                    rows += [tuple(ids[i][mask[i]].tolist()) for i in range(len(ids))]
            out.append((sorted(indices), sorted(rows)))
        return out

    one, two = steps(1, 2), steps(2, 1)
    assert one == two
    assert [k for indices, _ in one for k in indices] == list(range(12))
    assert text_batches(cfg.model_copy(update={"consumers": None}), 4, *tokenizers, seed=3).dataset.consumers == 1
    files = TextDataConfig(files=[str(p) for p in sorted(Path(manifest).parent.glob("*.parquet"))])
    assert isinstance(text_batches(files, 4, *tokenizers, seed=3), MicroBatches)


@pytest.mark.parametrize("raw,message", [
    ({"files": ["a.jsonl"], "manifest": "m"}, "data.files and data.manifest: give one of them"),
    ({}, "data.files or data.manifest"),
    ({"files": []}, "data.files: empty"),
    ({"files": ["a.jsonl"], "num_workers": 2}, "data.num_workers: a streaming option"),
    ({"files": ["a.jsonl"], "length_bucketing": True}, "data.length_bucketing: a streaming option"),
    ({"manifest": "m", "text_column": "body"}, "data.text_column: used with data.files only"),
])
def test_data_section_names_the_key_at_fault(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate(raw, TextDataConfig, source="data")


def test_data_section_passes_every_stream_option_to_the_reader(corpus):
    cfg = TextDataConfig(manifest=corpus[1], max_length=32, shuffle=False, shuffle_window=5, pool_batches=2,
                         length_bucketing=True, consumers=4, num_workers=2, prefetch_factor=1,
                         verify_checksums=False)
    stream = StreamConfig(**cfg.stream_options())
    assert stream.model_dump(exclude={"epochs", "drop_last", "return_text"}) == cfg.model_dump(
        exclude={"files", "text_column"})


def test_stage1_buckets_by_length_by_default_same_examples_less_padding(corpus, tokenizers):
    """A stage-1 data section streams length-bucketed batches unless told not to: one epoch holds exactly the
    examples (and texts) of the unbucketed epoch, in batches with fewer padded cells."""
    docs, manifest = corpus
    data = TextDataConfig(manifest=manifest, max_length=MAX_LENGTH, shuffle_window=16, pool_batches=3)
    assert data.length_bucketing is None and data.stream_options()["length_bucketing"] is True
    assert TextDataConfig(manifest=manifest, length_bucketing=False).stream_options()["length_bucketing"] is False

    def epoch(bucketing: bool):
        cfg = StreamConfig(**data.stream_options(), return_text=True, epochs=1).model_copy(
            update={"length_bucketing": bucketing})
        seen, padded = [], 0
        for batch in StreamLoader(cfg, *tokenizers, batch_size=4, seed=0):
            seen += [(d, c, t) for (d, c), t in zip(keys(batch), batch["text"])]
            padded += int((batch["llm_attention_mask"] == 0).sum() + (batch["nllb_attention_mask"] == 0).sum())
        return seen, padded

    (bucketed, bucketed_pad), (plain, plain_pad) = epoch(True), epoch(False)
    check_exact_cover(bucketed, docs)
    assert sorted(bucketed) == sorted(plain)
    assert bucketed_pad < plain_pad
