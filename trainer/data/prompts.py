"""The middle-layer alignment study's prompts (M2): system prompt, user text, assistant answer.

    prompts = ChatPrompts(tokenizer, "slot_filling")
    prompts.prompt(example)   # the conversation up to the assistant's turn, as text
    prompts.answer(example)   # the assistant's answer text with the end of its turn

Slot filling (MASSIVE): the system prompt is the study's (`SLOT_FILLING_SYSTEM`, from its
`run_inference_massive.py`), the user turn the utterance, the answer "type: value; ..." or "None".
Translation: "Translate the following sentences from {source} to {target}." (the study's WMT23 prompt;
language names from the language table), the user turn the source sentence, the answer the reference.

Formatting: with a chat template (e.g. Llama 3 Instruct, the study's model) the messages go through
`apply_chat_template(..., add_generation_prompt=True)` and the answer ends as the template closes an
assistant turn (`<|eot_id|>` for Llama 3, as the study's training data does). A template that refuses a
system role gets the system text in front of the user text. Without one (or `chat_template: plain`) the
plain fallback is

    {system}

    ### Input:
    {user}

    ### Response:
    {answer}<eos>
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.task import build_prompt_answer_batch
from trainer.errors import DataError

SLOT_FILLING_SYSTEM = (
    "Given a command from the user, a voice assistant will extract entities essential for carry out the command.\n"
    "For example, for a command about playing a specific song, the name of the song mentioned by the user would be "
    "an entity, falling under the type of \"song name\".\n"
    "Your task is to extract the entities as words from the command if they fall under a predefined list of entity "
    "types.")
TRANSLATION_SYSTEM = "Translate the following sentences from {source} to {target}."
PLAIN_TEMPLATE = "{system}\n\n### Input:\n{user}\n\n### Response:\n"


def language_name(flores: str) -> str:
    """English name of a FLORES code from the language table (`deu_Latn` -> "German"); the code when unknown."""
    from trainer.languages.table import UnknownLanguageError, language_table

    try:
        return language_table().get(flores).name
    except UnknownLanguageError:
        return flores


class ChatPrompts:
    """Prompt and answer texts of `TaskExample`s of a generative task (`slot_filling` or `translation`).

    `system`: replaces the study's system prompt (translation: may use {source} and {target}).
    `chat_template`: `auto` uses the tokenizer's when it has one, `plain` the fallback above.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: str, system: str | None = None,
                 chat_template: str = "auto"):
        if task not in ("slot_filling", "translation"):
            raise DataError(f"no prompt for task {task!r} (slot_filling or translation)")
        self.tokenizer, self.task = tokenizer, task
        self.system = system if system is not None else (SLOT_FILLING_SYSTEM if task == "slot_filling"
                                                          else TRANSLATION_SYSTEM)
        self.chat = chat_template == "auto" and getattr(tokenizer, "chat_template", None) is not None

    def _system(self, example) -> str:
        if self.task == "translation":
            return self.system.format(source=language_name(example.language),
                                      target=language_name(example.target_language))
        return self.system

    def _messages(self, example, answer: str | None = None) -> list[dict]:
        messages = [{"role": "system", "content": self._system(example)},
                    {"role": "user", "content": example.texts[0]}]
        return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception:   # a template without a system role (Gemma): the system text opens the user turn
            merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"},
                      *messages[2:]]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=generation_prompt)

    def prompt(self, example) -> str:
        """The text up to where the assistant's answer starts."""
        if not self.chat:
            return PLAIN_TEMPLATE.format(system=self._system(example), user=example.texts[0])
        return self._render(self._messages(example), generation_prompt=True)

    def answer(self, example) -> str:
        """The answer text as the template writes it after the prompt (its end-of-turn marker included);
        plain format: the answer alone (the collator adds EOS)."""
        if not self.chat:
            return example.target
        prompt, full = self.prompt(example), self._render(self._messages(example, example.target), False)
        if not full.startswith(prompt):
            raise DataError("the chat template renders an answered conversation that does not start with its "
                            "generation prompt; use task.chat_template: plain")
        return full[len(prompt):]


class GenerativeCollator:
    """`TaskExample`s -> a prompt/answer causal LM batch (training) or left-padded prompts (generation).

    Training (`__call__`): input_ids, attention_mask, labels [b, s]; labels -100 outside the answer
    (`build_prompt_answer_batch`), the prompt cut from the left past `max_length`. Plain format: the
    prompt with the tokenizer's BOS, the answer then EOS; chat templates write their own special tokens.
    Generation (`prompts`): input_ids, attention_mask [b, s] padded on the left (decoder-only generation
    continues every row at the last column), each prompt's last `max_length` tokens.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompts: ChatPrompts, max_length: int):
        self.tokenizer, self.prompts, self.max_length = tokenizer, prompts, max_length
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None and not prompts.chat else []

    def _prompt_ids(self, examples: Sequence) -> list[list[int]]:
        texts = [self.prompts.prompt(e) for e in examples]
        return self.tokenizer(texts, add_special_tokens=not self.prompts.chat)["input_ids"]

    def __call__(self, examples: Sequence) -> dict[str, torch.Tensor]:
        answers = [self.tokenizer(self.prompts.answer(e), add_special_tokens=False)["input_ids"] + self.eos
                   for e in examples]
        return build_prompt_answer_batch(self._prompt_ids(examples), answers, pad_id=self.tokenizer.pad_token_id,
                                         padding_side=self.tokenizer.padding_side, max_length=self.max_length)

    def prompts_batch(self, examples: Sequence) -> dict[str, torch.Tensor]:
        ids = [p[-self.max_length:] for p in self._prompt_ids(examples)]
        width = max(len(p) for p in ids)
        pad = self.tokenizer.pad_token_id
        return {"input_ids": torch.tensor([[pad] * (width - len(p)) + p for p in ids], dtype=torch.long),
                "attention_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids], dtype=torch.long)}

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: EOS, and with a chat template the first special token after the answer
        (Llama 3's <|eot_id|>)."""
        stops = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        if self.prompts.chat:
            from types import SimpleNamespace

            probe = SimpleNamespace(texts=("x",), target="x", language="eng_Latn", target_language="eng_Latn")
            tail = self.tokenizer(self.prompts.answer(probe)[1:], add_special_tokens=False)["input_ids"]
            stops += [t for t in tail[:1] if t in self.tokenizer.all_special_ids]
        return sorted(set(stops))

