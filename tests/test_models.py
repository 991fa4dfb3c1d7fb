"""Model pieces: tokenizers, pooling, padding, bidirectional attention, LoRA, MT-LLM, export."""

import pytest
import torch
from transformers import AutoTokenizer

from trainer.config import EncoderConfig, LLMConfig, LoraConfig, MTLLMConfig
from trainer.models.bidirectional import make_bidirectional
from trainer.models.llm_forward import run_llm
from trainer.models.loading import choose_attn_implementation, load_llm, load_nllb_encoder, load_nllb_tokenizer
from trainer.models.lora import add_lora
from trainer.models.mt_llm import build_mt_llm
from trainer.models.pooling import pool
from trainer.models.weights import load_trainable, save_trainable
from trainer.objectives.distillation import distillation_mse
from trainer.objectives.distillation import distillation_mse, fraction_of_variance_unexplained
from trainer.tiny import text as synthetic

SENTENCES = [synthetic.sentences(lang, 1, seed=5)[0] for lang in synthetic.DEMO_LANGUAGES]


# --- tokenizers -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2", "nllb"])
def test_tokenizers_round_trip_every_script(tiny_path, name):
    tok = AutoTokenizer.from_pretrained(tiny_path(name))
    for text in SENTENCES:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, f"{name} maps part of {text!r} to <unk>"
        assert tok.decode(ids, skip_special_tokens=True).strip() == text
        assert len(ids) < len(text.encode("utf-8")), "tokenizer should merge, not spell out bytes"


def test_nllb_tokenizer_keeps_language_codes(tiny_path):
    tok = load_nllb_tokenizer(EncoderConfig(name_or_path=tiny_path("nllb"), source_lang="ell_Grek"))
    for code in ("eng_Latn", "ell_Grek", "zho_Hans", "arb_Arab", "swh_Latn"):
        assert tok.convert_tokens_to_ids(code) != tok.unk_token_id
    ids = tok("Καλή μέρα")["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[0] == "ell_Grek" and ids[-1] == tok.eos_token_id
    tok.src_lang = "zho_Hans"
    assert tok.convert_ids_to_tokens(tok("的一是")["input_ids"])[0] == "zho_Hans"
    with pytest.raises(ValueError, match="ell_Latn"):
        load_nllb_tokenizer(EncoderConfig(name_or_path=tiny_path("nllb"), source_lang="ell_Latn"))


# --- pooling ------------------------------------------------------------------------------------

MASKS = {
    "right": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]),
    "left": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]),
}


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", ["mean", "bos", "eos"])
def test_pooling_matches_hand_computation(side, mode):
    torch.manual_seed(0)
    mask = MASKS[side]
    hidden = torch.randn(3, 5, 4)
    got = pool(hidden, mask, mode)
    for b in range(3):
        real = [t for t in range(5) if mask[b, t] == 1]
        if mode == "mean":
            expected = sum(hidden[b, t] for t in real) / len(real)
        elif mode == "bos":
            expected = hidden[b, real[0]]
        else:
            expected = hidden[b, real[-1]]
        torch.testing.assert_close(got[b], expected)


# --- LLM forward: padding sides and bidirectional attention -------------------------------------

def _llm(tiny_path, kind, attn="sdpa", bidirectional=False):
    return load_llm(LLMConfig(name_or_path=tiny_path(kind), attn_implementation=attn,
                              bidirectional=bidirectional)).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "gemma2"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_side_does_not_change_real_tokens(tiny_path, kind, bidirectional):
    """Same sentence alone, right-padded and left-padded: identical states at its real tokens."""
    model = _llm(tiny_path, kind, attn="auto", bidirectional=bidirectional)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    alone = run_llm(model, torch.ones_like(ids), input_ids=ids).last_hidden_state[0]
    pad = 3
    right_ids = torch.cat([ids, torch.full((1, pad), 2)], dim=1)
    right_mask = torch.cat([torch.ones_like(ids), torch.zeros(1, pad, dtype=torch.long)], dim=1)
    left_ids = torch.cat([torch.full((1, pad), 2), ids], dim=1)
    left_mask = right_mask.flip(1)
    right = run_llm(model, right_mask, input_ids=right_ids).last_hidden_state[0, :5]
    left = run_llm(model, left_mask, input_ids=left_ids).last_hidden_state[0, pad:]
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", ["single", "padded"])
def test_bidirectional_attention_really_looks_ahead(tiny_path, kind, attn, batch):
    """Perturb token j: earlier positions change iff bidirectional; padding stays masked."""
    ids = torch.tensor([[5, 17, 42, 99, 7, 11]])
    mask = torch.ones_like(ids)
    if batch == "padded":
        ids = torch.cat([ids, torch.tensor([[8, 9, 10, 2, 2, 2]])])
        mask = torch.cat([mask, torch.tensor([[1, 1, 1, 0, 0, 0]])])
    j = 4
    perturbed = ids.clone()
    perturbed[0, j] = 300
    for bidirectional in (False, True):
        model = _llm(tiny_path, kind, attn, bidirectional)
        a = run_llm(model, mask, input_ids=ids).last_hidden_state
        b = run_llm(model, mask, input_ids=perturbed).last_hidden_state
        before_j_changed = (a[0, :j] - b[0, :j]).abs().amax(dim=-1) > 1e-6
        assert bool(before_j_changed.all()) == bidirectional, (kind, attn, batch, bidirectional)
        if batch == "padded":
            # changing pad ids must not leak into real tokens of the padded row
            other = ids.clone()
            other[1, 3:] = 123
            c = run_llm(model, mask, input_ids=other).last_hidden_state
            torch.testing.assert_close(c[1, :3], a[1, :3], atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or __import__("importlib").util.find_spec("flash_attn") is None,
                    reason="needs a CUDA GPU and flash-attn")
@pytest.mark.parametrize("bidirectional", [False, True])
def test_flash_attention_2_attends_as_sdpa_does_both_ways_with_padding(tiny_path, bidirectional):
    """FlashAttention 2 reads the attention modules' is_causal flag and the 2-D padding mask: its real tokens'
    states equal sdpa's (bf16), and a later token changes earlier states iff bidirectional."""
    ids = torch.tensor([[5, 17, 42, 99, 7, 11], [8, 9, 10, 2, 2, 2]], device="cuda")
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], device="cuda")
    states = {}
    for attn in ("sdpa", "flash_attention_2"):
        model = load_llm(LLMConfig(name_or_path=tiny_path("llama"), attn_implementation=attn, dtype="bfloat16",
                                   bidirectional=bidirectional)).cuda().eval()
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            states[attn] = run_llm(model, mask, input_ids=ids).last_hidden_state.float()
            perturbed = ids.clone()
            perturbed[0, 4] = 300
            moved = run_llm(model, mask, input_ids=perturbed).last_hidden_state.float()
        looked_ahead = bool(((moved[0, :4] - states[attn][0, :4]).abs().amax(dim=-1) > 1e-3).all())
        assert looked_ahead == bidirectional, attn
    real = mask.bool()
    torch.testing.assert_close(states["flash_attention_2"][real], states["sdpa"][real], atol=2e-2, rtol=2e-2)


def test_bidirectional_rejects_model_without_attention_flag():
    with pytest.raises(ValueError, match="no attention module"):
        make_bidirectional(torch.nn.Linear(2, 2))


def test_auto_attention_falls_back_to_what_the_model_supports(tiny_path):
    if not torch.cuda.is_available():
        assert choose_attn_implementation("auto") == "sdpa"
    assert choose_attn_implementation("eager") == "eager"
    assert _llm(tiny_path, "llama", attn="auto").config._attn_implementation == choose_attn_implementation("auto")
    assert _llm(tiny_path, "gemma2", attn="auto").config._attn_implementation == "eager"  # no sdpa in Gemma 2
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        _llm(tiny_path, "gemma2", attn="sdpa")


# --- LoRA and MT-LLM ----------------------------------------------------------------------------

def test_zero_initialised_lora_leaves_llm_output_unchanged(tiny_path):
    model = _llm(tiny_path, "llama")
    ids = torch.tensor([[5, 17, 42, 99], [8, 9, 10, 2]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    before = run_llm(model, mask, input_ids=ids).last_hidden_state
    lora = add_lora(model, r=4, alpha=8, dropout=0.0)
    after = run_llm(lora, mask, input_ids=ids).last_hidden_state
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    # ... and non-zero B does change it, so the check above is not vacuous
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    changed = run_llm(lora, mask, input_ids=ids).last_hidden_state
    assert (changed - before).abs().max() > 1e-3


@pytest.fixture()
def mt_llm(tiny_path):
    cfg = MTLLMConfig(llm=LLMConfig(name_or_path=tiny_path("llama")),
                      encoder=EncoderConfig(name_or_path=tiny_path("nllb")),
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(0)
    return build_mt_llm(cfg), cfg


def _views(tiny_path, texts):
    llm_tok = AutoTokenizer.from_pretrained(tiny_path("llama"))
    llm_tok.pad_token = llm_tok.pad_token or llm_tok.eos_token
    nllb_tok = AutoTokenizer.from_pretrained(tiny_path("nllb"), src_lang="eng_Latn")
    a = llm_tok(texts, padding=True, return_tensors="pt")
    b = nllb_tok(texts, padding=True, return_tensors="pt")
    return dict(llm_input_ids=a.input_ids, llm_attention_mask=a.attention_mask,
                nllb_input_ids=b.input_ids, nllb_attention_mask=b.attention_mask)


def test_only_projection_and_lora_are_trainable_and_get_gradients(mt_llm, tiny_path):
    model, _ = mt_llm
    model.train()
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # so lora_A gets a gradient too
    out = model(**_views(tiny_path, synthetic.english_documents(4, seed=1)))
    distillation_mse(out.teacher, out.student).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projection.") or "lora_" in n for n in trainable)
    assert any(n.startswith("projection.") for n in trainable)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} received no gradient"
        else:
            assert p.grad is None, f"frozen {name} received a gradient"


def test_teacher_equals_base_llm_and_student_path_with_identity_input(mt_llm, tiny_path):
    """Teacher = base LLM (adapters off). Feeding the LLM's own token embeddings through the
    student's LLM call with adapters disabled reproduces the teacher exactly."""
    model, cfg = mt_llm
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # adapters on would now change the output
    batch = _views(tiny_path, ["The farmer sees a red apple.", "A child buys the small house today."])
    teacher = model.teacher(batch["llm_input_ids"], batch["llm_attention_mask"])

    base = load_llm(cfg.llm)
    expected = pool(run_llm(base, batch["llm_attention_mask"], input_ids=batch["llm_input_ids"]).last_hidden_state,
                    batch["llm_attention_mask"], "mean")
    torch.testing.assert_close(teacher, expected, atol=1e-6, rtol=1e-5)

    embeds = model.llm.get_input_embeddings()(batch["llm_input_ids"])
    with model.llm.disable_adapter():
        identity = run_llm(model.llm, batch["llm_attention_mask"], inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(pool(identity, batch["llm_attention_mask"], "mean"), teacher, atol=1e-6, rtol=1e-5)
    with_adapters = run_llm(model.llm, batch["llm_attention_mask"], inputs_embeds=embeds).last_hidden_state
    assert (pool(with_adapters, batch["llm_attention_mask"], "mean") - teacher).abs().max() > 1e-4


def test_encoder_stays_in_eval_mode_when_training(mt_llm, tiny_path):
    model, _ = mt_llm
    assert model.encoder.config.dropout > 0  # the check below would be vacuous otherwise
    model.train()
    assert not model.encoder.training and model.llm.training
    batch = _views(tiny_path, ["The farmer sees a red apple.", "A child buys the small house."])
    z1 = model.student(batch["nllb_input_ids"], batch["nllb_attention_mask"])
    z2 = model.student(batch["nllb_input_ids"], batch["nllb_attention_mask"])
    torch.testing.assert_close(z1, z2, atol=0, rtol=0)


def test_nllb_encoder_is_loaded_alone_frozen_and_in_eval(tiny_path):
    encoder = load_nllb_encoder(EncoderConfig(name_or_path=tiny_path("nllb")))
    assert type(encoder).__name__ == "M2M100Encoder"
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not any("decoder" in n for n, _ in encoder.named_parameters())


def test_save_then_load_gives_identical_outputs(mt_llm, tiny_path, tmp_path):
    model, cfg = mt_llm
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.05)
    model.eval()
    batch = _views(tiny_path, synthetic.english_documents(3, seed=2))
    before = model.student(batch["nllb_input_ids"], batch["nllb_attention_mask"])
    export = save_trainable(model.trainable_state_dict(), tmp_path / "export", "recipe: stage1\n")
    assert (export / "config.yaml").read_text() == "recipe: stage1\n"

    torch.manual_seed(123)
    fresh = build_mt_llm(cfg).eval()
    assert not torch.equal(fresh.student(batch["nllb_input_ids"], batch["nllb_attention_mask"]), before)
    load_trainable(fresh, export)
    after = fresh.student(batch["nllb_input_ids"], batch["nllb_attention_mask"])
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_load_rejects_mismatched_export(mt_llm, tmp_path):
    model, _ = mt_llm
    state = model.trainable_state_dict()
    state.pop(next(iter(state)))
    save_trainable(state, tmp_path / "partial", "x: 1\n")
    with pytest.raises(ValueError, match="missing"):
        load_trainable(model, tmp_path / "partial")
    with pytest.raises(ValueError, match="empty"):
        save_trainable({"w": torch.empty(0)}, tmp_path / "empty", "x: 1\n")


# --- distillation objective ---------------------------------------------------------------------

def test_mse_and_fvu_against_hand_computation():
    teacher = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]], dtype=torch.bfloat16)
    student = torch.tensor([[0.0, 2.0], [3.0, 4.0], [6.0, 1.0]])
    sq = [(1 - 0) ** 2, 0, 0, (6 - 4) ** 2, (5 - 6) ** 2, 0]
    mse = sum(sq) / 6
    col0, col1 = [1.0, 3.0, 5.0], [2.0, 6.0, 1.0]
    var = lambda xs: sum((x - sum(xs) / 3) ** 2 for x in xs) / 3  # noqa: E731 population variance
    fvu = mse / ((var(col0) + var(col1)) / 2)
    loss = distillation_mse(teacher, student)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(mse)
    assert fraction_of_variance_unexplained(teacher, student).item() == pytest.approx(fvu)
    assert torch.isnan(fraction_of_variance_unexplained(teacher[:1], student[:1]))


def test_the_aligned_tiny_nllb_encodes_translations_alike_and_the_random_one_does_not(tiny_path):
    """tiny:nllb-aligned stands in for NLLB's cross-lingual encoder (M1's transfer path); tiny:nllb is random."""
    from transformers import AutoTokenizer, M2M100Model

    from trainer.tiny.text import parallel_sentences

    def similarity(name: str, lang: str) -> float:
        path = tiny_path(name)
        tok, encoder = AutoTokenizer.from_pretrained(path), M2M100Model.from_pretrained(path).get_encoder().eval()
        pairs = parallel_sentences(lang, 8, seed=4)

        def pooled(code: str, texts: list[str]) -> torch.Tensor:
            tok.src_lang = code
            batch = tok(texts, return_tensors="pt", padding=True)
            with torch.no_grad():
                hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None]
            return (hidden * mask).sum(1) / mask.sum(1)

        english, target = pooled("eng_Latn", [e for e, _ in pairs]), pooled(lang, [t for _, t in pairs])
        return torch.nn.functional.cosine_similarity(english, target).min().item()

    for lang in ("deu_Latn", "ell_Grek", "amh_Ethi"):
        assert similarity("nllb-aligned", lang) > 0.999, lang
        assert similarity("nllb", lang) < 0.99, lang
