"""Stage 1's objective does not depend on how its batches are made: cached and live teachers give the same
losses, and length bucketing gives every example the same loss; a cache made for another teacher or text is
refused naming what differs. (2 ZeRO ranks killed and resumed with the cache: tests/test_engine.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from data_prep.demo_text import write_demo_shards
from data_prep.teacher_cache import main as build_cli
from trainer.config import ConfigError, load_job
from trainer.data.teacher_targets import TeacherTargets
from trainer.models.mt_llm import MTLLM
from trainer.run import run_job

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo_stage1.yaml"


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_cache):
    tmp = tmp_path_factory.mktemp("teacher_targets")
    manifest = write_demo_shards(tmp / "demo", docs_per_file=80, docs_per_shard=40)
    overrides = [f"data.manifest={manifest}", f"model.cache_dir={tiny_cache}", "optim.max_steps=4",
                 "optim.warmup_steps=0", "optim.micro_batch_size=8", "model.lora.dropout=0.1",
                 f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", "tracking.export=none", "checkpoint.every=0",
                 f"teacher_cache={tmp / 'cache'}"]
    assert build_cli([str(DEMO), *overrides, "--batch-size", "5"]) == 0   # other batches than training's
    return tmp, overrides


def test_cached_and_live_teacher_give_the_same_losses(setting, monkeypatch):
    tmp, overrides = setting
    live = run_job(load_job(DEMO, [*overrides, f"output_dir={tmp}/live", "teacher_cache=null"]))

    def no_teacher_forward(*args, **kwargs):
        raise AssertionError("the teacher ran although its targets are cached")

    monkeypatch.setattr(MTLLM, "teacher", no_teacher_forward)
    cached = run_job(load_job(DEMO, [*overrides, f"output_dir={tmp}/cached"]))
    assert len(live["losses"]) == 4
    # the cache's vectors came from batches of other shapes: equal up to the order of float additions
    assert cached["losses"] == pytest.approx(live["losses"], rel=1e-5)


def test_every_chunk_the_stream_hands_out_has_the_live_teachers_vector(setting, tiny_cache):
    tmp, overrides = setting
    from trainer.data.text import text_batches
    from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
    from trainer.models.mt_llm import build_mt_llm
    from trainer.recipes.stage1 import teacher_fingerprint

    job = load_job(DEMO, overrides)
    model = build_mt_llm(job.model).eval()
    targets = TeacherTargets(job.teacher_cache, teacher_fingerprint(job, model))
    batches = text_batches(job.data, 8, load_llm_tokenizer(job.model.llm, tiny_cache),
                           load_nllb_tokenizer(job.model.encoder, tiny_cache), seed=0)
    for _ in range(3):
        batch = next(batches)
        live = model.teacher(batch["llm_input_ids"], batch["llm_attention_mask"])
        cached = targets.lookup(batch["doc_index"], batch["chunk_index"])
        assert cached.dtype == torch.float32 and cached.shape == live.shape
        torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-6)
    batches.close()


def test_a_cache_for_another_teacher_or_text_is_refused_naming_the_difference(setting):
    tmp, overrides = setting
    with pytest.raises(ConfigError, match=r"pooling: cached 'mean', now 'eos'"):
        run_job(load_job(DEMO, [*overrides, f"output_dir={tmp}/eos", "model.pooling=eos"]))
    with pytest.raises(ConfigError, match=r"max_length: cached 64, now 48"):
        run_job(load_job(DEMO, [*overrides, f"output_dir={tmp}/short", "data.max_length=48"]))
    partial = tmp / "partial"
    shutil.copytree(tmp / "cache", partial)
    shutil.rmtree(partial / "part-00001")
    with pytest.raises(ConfigError, match=r"lacks parts \[1\].*--shards 1:2"):
        run_job(load_job(DEMO, [*overrides, f"output_dir={tmp}/partial", f"teacher_cache={partial}"]))
    assert build_cli([str(DEMO), *overrides, "teacher_cache=null"]) == 2   # the builder needs the folder


def test_length_bucketing_changes_the_batches_not_any_examples_loss(setting, tiny_cache):
    """One epoch, bucketed vs plain batches, the same model: every chunk's own distillation loss (its squared
    error, mean over the dimensions) is the same, so bucketing only removes padding."""
    tmp, overrides = setting
    from trainer.data.stream import StreamConfig, StreamLoader
    from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
    from trainer.models.mt_llm import build_mt_llm

    torch.manual_seed(0)
    model = build_mt_llm(load_job(DEMO, overrides).model).eval()
    with torch.no_grad():   # a trained-looking student: B != 0, so the student differs from the teacher
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    losses, padded = {}, {}
    for bucketing in (True, False):
        job = load_job(DEMO, [*overrides, f"data.length_bucketing={bucketing}"])
        batches = StreamLoader(StreamConfig(**job.data.stream_options(), epochs=1),
                               load_llm_tokenizer(job.model.llm, tiny_cache),
                               load_nllb_tokenizer(job.model.encoder, tiny_cache), 8, seed=0)
        losses[bucketing], padded[bucketing] = {}, 0
        with torch.no_grad():
            for batch in batches:
                out = model(**batch)
                per_example = ((out.teacher - out.student) ** 2).mean(dim=-1)
                for key, loss in zip(zip(batch["doc_index"].tolist(), batch["chunk_index"].tolist()), per_example):
                    losses[bucketing][key] = float(loss)
                padded[bucketing] += int((batch["nllb_attention_mask"] == 0).sum())
        batches.close()
    assert losses[True].keys() == losses[False].keys() and len(losses[True]) > 100
    for key, loss in losses[False].items():
        assert losses[True][key] == pytest.approx(loss, rel=1e-4, abs=1e-7), key
    assert padded[True] < padded[False]
