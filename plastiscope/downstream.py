"""Downstream tasks: documents as token sequences, and rank-classification accuracy on a labelled task.

A task is a set of documents (the ``finetune_data`` input), plain (language modelling) or
labelled; the plasticity analysis fine-tunes on it, the landscape analysis scores it. A
labelled document with text ``t`` and label ``y`` becomes the token sequence
``encode(t) + tokens(" <name>:") + tokens(" <y>")`` (``<name>`` is the label column's name):
the text part is truncated so the label always fits the context, and fine-tuning and the
losses use the whole sequence. Accuracy scores each candidate label ``c`` (every distinct label
of the task) by the summed log-probability of ``tokens(" <c>")`` after ``encode(t) +
tokens(" <name>:")`` and predicts the highest-scoring one (rank classification; ties go to the
first candidate in sorted order).

**Prompt/response tasks** (supervised fine-tuning: documents with ``prompt`` and ``response``
columns, or chat ``messages``, :mod:`plastiscope.data`). A document becomes ``prompt ids +
response ids`` and only the response tokens are targets (:func:`sft_ids`):

- with a **chat template** (``tokenizer.chat_template`` set), the chat (``[user: prompt,
  assistant: response]`` for prompt/response records) is rendered by
  ``tokenizer.apply_chat_template``: the prompt is every message but the last with the
  generation prompt, the response what the whole chat adds after it (the template's
  end-of-turn tokens included, so fine-tuning learns to stop);
- **without one**, ``[BOS] + tokens(prompt) + tokens(response) + [EOS]``, prompt and response
  tokenized separately and joined with no separator (put one, e.g. a trailing ``"Answer:"``,
  in the prompt); a chat is written as plain text by :func:`plastiscope.data.render_messages`.

A sequence longer than the context keeps the response (at most half the context when the
prompt is longer than that) and the end of the prompt (BOS kept). **Generative scoring**
(:func:`generative_scores`): each prompt (its end, so that it and ``max_new_tokens`` fit the
context) is continued by greedy decoding (``model.generate(do_sample=False)``, left-padded
batches), stopped at EOS; the decoded continuation is the prediction, the response text the
reference, compared by exact match after :func:`normalize_answer`, or by a user's scorer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plastiscope.data import DataError, Documents, encode, pad, render_messages, sft_columns
from plastiscope.generation import greedy_generate
from plastiscope.losses import model_device, token_losses

DOCUMENT_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".json", ".csv", ".tsv")


@dataclass
class DownstreamTask:
    """A downstream task's documents; ``labels[i]`` is document ``i``'s label (None for plain LM);
    ``sft``: the prompt/response columns of a prompt/response task (``("prompt", "response")`` or
    ``("messages",)``), None otherwise."""

    name: str
    documents: Documents
    label_name: str | None = None
    labels: list[str] | None = None
    sft: tuple[str, ...] | None = None

    @classmethod
    def from_documents(cls, documents: Documents, label_column: str | None = None, name: str | None = None) -> DownstreamTask:
        """The task of ``documents``, labelled by ``label_column`` when given, a prompt/response task when its documents
        have ``prompt`` and ``response`` (or ``messages``) columns; named ``name`` or after its source. A document
        without a label (empty, null, NaN) is refused: its label would be the text ``None`` or ``nan``."""
        name = name or _default_name(documents)
        if label_column is None:
            return cls(name, documents, sft=sft_columns(list(documents.columns)))
        values = documents.column(label_column)
        blank = [i for i, x in enumerate(values) if x is None or (isinstance(x, float) and x != x) or not str(x).strip()]
        if blank:
            raise DataError(f"{documents.source}: {len(blank)} document(s) have no {label_column!r} label (the first: document "
                            f"{blank[0]}); fill the label in or remove those documents")
        return cls(name, documents, label_column, [str(x) for x in values])

    def chat(self, row: int) -> list[dict[str, str]]:
        """Document ``row`` of a prompt/response task as chat messages, the response last."""
        if self.sft == ("messages",):
            return list(self.documents.columns["messages"][row])
        prompt, response = (self.documents.columns[c][row] for c in ("prompt", "response"))
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]

    def reference(self, row: int) -> str:
        """The response text of document ``row`` of a prompt/response task (the reference answer)."""
        return self.chat(row)[-1]["content"]


def _default_name(documents: Documents) -> str:
    """A file's stem (``downstream.jsonl`` -> ``downstream``), another source's text, or a content tag."""
    source = documents.source
    if source.startswith("<") or not source:
        return f"documents-{documents.sha256()[:8]}"
    path = Path(source)
    return path.stem if path.suffix.lower() in DOCUMENT_SUFFIXES or path.is_dir() else source


def split_indices(n: int, eval_docs: int, select_docs: int, train_docs: int, seed: int) -> tuple[np.ndarray, ...]:
    """Disjoint ``(eval, select, train)`` document indices of a seeded shuffle of ``range(n)``."""
    if n < eval_docs + select_docs + 1:
        raise ValueError(
            f"plasticity: the task has {n} documents, fewer than eval_docs + select_docs + 1 = "
            f"{eval_docs + select_docs + 1}; lower eval_docs / select_docs or give more documents"
        )
    order = np.random.default_rng(seed).permutation(n)
    return (order[:eval_docs], order[eval_docs : eval_docs + select_docs],
            order[eval_docs + select_docs : eval_docs + select_docs + train_docs])


def _label_tokens(tokenizer: Any, label_name: str, label: str) -> tuple[list[int], list[int]]:
    cue = tokenizer(f" {label_name}:", add_special_tokens=False)["input_ids"]
    return cue, tokenizer(f" {label}", add_special_tokens=False)["input_ids"]


def labelled_ids(
    tokenizer: Any, text: str, label_name: str, label: str, max_length: int, reserve: int = 0
) -> tuple[list[int], int]:
    """Token ids of ``"<text> <label_name>: <label>"`` and where the label starts.

    ``encode(text)`` (BOS + text) is truncated so the cue and ``max(reserve, label tokens)``
    always fit in ``max_length``: with ``reserve`` = the longest candidate label, every
    candidate sees the same text.
    """
    cue, tail = _label_tokens(tokenizer, label_name, label)
    room = max_length - len(cue) - max(len(tail), reserve)
    if room < 2:
        raise ValueError(f"plasticity: the label {label!r} takes {len(cue) + len(tail)} tokens; no room left in a context of {max_length}")
    prefix = encode(tokenizer, text, room) + cue
    return prefix + tail, len(prefix)


def label_reserve(task: DownstreamTask, tokenizer: Any) -> int:
    """Tokens of the longest candidate label of ``task`` (0 for plain tasks)."""
    if task.labels is None:
        return 0
    return max(len(_label_tokens(tokenizer, task.label_name, c)[1]) for c in set(task.labels))


def task_ids(task: DownstreamTask, tokenizer: Any, max_length: int, rows: Sequence[int]) -> list[list[int]]:
    """Token ids of documents ``rows`` of ``task`` (labelled documents include their label, prompt/response
    documents are prompt + response, :func:`sft_ids`)."""
    if task.sft is not None:
        return [ids for ids, _ in sft_ids(task, tokenizer, max_length, rows)]
    if task.labels is None:
        return [encode(tokenizer, task.documents.texts[i], max_length) for i in rows]
    reserve = label_reserve(task, tokenizer)
    return [labelled_ids(tokenizer, task.documents.texts[i], task.label_name, task.labels[i], max_length, reserve)[0]
            for i in rows]


@torch.no_grad()
def label_accuracy(model: Any, task: DownstreamTask, tokenizer: Any, max_length: int, rows: Sequence[int],
                   pad_id: int, batch_size: int = 64) -> np.ndarray:
    """``[doc]`` 1.0 where the true label scores highest among the candidates (module docstring)."""
    candidates = sorted(set(task.labels))
    reserve = label_reserve(task, tokenizer)
    scores = np.zeros((len(rows), len(candidates)))
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        for c, label in enumerate(candidates):
            seqs = [labelled_ids(tokenizer, task.documents.texts[i], task.label_name, label, max_length, reserve)
                    for i in rows]
            for start in range(0, len(seqs), batch_size):
                chunk = seqs[start : start + batch_size]
                tokens, mask = pad([s for s, _ in chunk], pad_id)
                tokens, mask = tokens.to(device), mask.to(device)
                loss, _ = token_losses(model(tokens, attention_mask=mask.long()).logits, tokens, mask)
                label_part = torch.zeros_like(mask[:, 1:])  # target p+1 sits at column p
                for r, (seq, at) in enumerate(chunk):
                    label_part[r, at - 1 : len(seq) - 1] = True
                scores[start : start + len(chunk), c] = -(loss * label_part).sum(1).double().cpu().numpy()
    finally:
        model.train(was_training)
    truth = np.array([candidates.index(task.labels[i]) for i in rows])
    return (scores.argmax(1) == truth).astype(np.float64)


def prompt_response_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    """``(prompt ids, response ids)`` of a chat whose last message is the response (module docstring):
    through ``tokenizer.apply_chat_template`` when the tokenizer has a chat template, else the plain
    concatenation ``[BOS] + tokens(prompt) + tokens(response) + [EOS]``."""
    if getattr(tokenizer, "chat_template", None):
        prompt = list(tokenizer.apply_chat_template(list(messages[:-1]), add_generation_prompt=True, tokenize=True,
                                                    return_dict=False))
        whole = list(tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=False))
        if whole[: len(prompt)] != prompt or len(whole) == len(prompt):
            raise DataError("the tokenizer's chat template does not render the prompt (with its generation prompt) as the "
                            "start of the whole chat; set tokenizer.chat_template = None to use the plain concatenation")
        return prompt, whole[len(prompt) :]
    if len(messages) == 2 and messages[0]["role"] == "user":
        prompt_text, response_text = messages[0]["content"], messages[1]["content"]
    else:
        prompt_text, response_text = render_messages(messages)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return bos + _tokens(tokenizer, prompt_text), _tokens(tokenizer, response_text) + eos


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _keep_end(prompt: list[int], room: int, bos: int | None) -> list[int]:
    """The last ``room`` tokens of ``prompt``, its BOS kept in front when it starts with one."""
    if len(prompt) <= room:
        return prompt
    if bos is not None and prompt and prompt[0] == bos:
        return prompt[:1] + prompt[len(prompt) - room + 1 :] if room > 1 else prompt[:1]
    return prompt[len(prompt) - room :]


def sft_ids(task: DownstreamTask, tokenizer: Any, max_length: int, rows: Sequence[int]) -> list[tuple[list[int], int]]:
    """``(ids, first_target)`` per document ``rows`` of a prompt/response task: prompt + response token ids,
    at most ``max_length``, and where the response starts (module docstring for the truncation rule)."""
    out = []
    for row in rows:
        prompt, response = prompt_response_ids(tokenizer, task.chat(row))
        if len(prompt) + len(response) > max_length:
            response = response[: max_length - min(len(prompt), max_length // 2)]
            prompt = _keep_end(prompt, max_length - len(response), tokenizer.bos_token_id)
        if not prompt:  # the first token is never a target
            prompt, response = response[:1], response[1:]
        out.append((prompt + response, len(prompt)))
    return out


def generation_prompts(task: DownstreamTask, tokenizer: Any, max_length: int, rows: Sequence[int],
                       max_new_tokens: int) -> list[list[int]]:
    """Prompt ids of documents ``rows``, each its last ``max_length - max_new_tokens`` tokens (BOS kept)."""
    room = max_length - max_new_tokens
    if room < 1:
        raise ValueError(f"plasticity: max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {max_length}")
    return [_keep_end(prompt_response_ids(tokenizer, task.chat(r))[0], room, tokenizer.bos_token_id) for r in rows]


ANSWER_MARKERS = re.compile(r"####|answer is", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(\.\d+)?%?|[-+]?\$?\.\d+%?")


def normalize_answer(text: str) -> str:
    """The answer a text states, normalised for exact match.

    1. The part after the last ``####`` or ``answer is`` marker (case-insensitive; GSM8K's
       ``#### 72``, "the answer is 72"), else the first non-empty line.
    2. Lowercased, whitespace collapsed to single spaces, leading/trailing whitespace and
       trailing punctuation (``. , ; : ! ?``) stripped.
    3. A number (the whole answer: sign, ``$``, thousands commas, decimals, ``%``) is written
       canonically: ``"$1,200.50"`` -> ``"1200.5"``, ``"4.0"`` -> ``"4"``.
    """
    found = list(ANSWER_MARKERS.finditer(text))
    if found:
        text = text[found[-1].end() :]
    else:
        text = next((line for line in text.splitlines() if line.strip()), "")
    text = " ".join(text.lower().split()).rstrip(".,;:!? ").lstrip(": ")
    if _NUMBER.fullmatch(text):
        try:
            digits = format(Decimal(text.replace("$", "").replace(",", "").rstrip("%")), "f")
            digits = (digits.rstrip("0").rstrip(".") if "." in digits else digits).lstrip("+")
            text = "0" if digits in ("-0", "") else digits
        except InvalidOperation:
            pass
    return text


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answers (:func:`normalize_answer`) are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def greedy_continuations(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int | None,
                         batch_size: int = 16) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids, cut before the first EOS), ``max_new_tokens`` at most.

    :func:`plastiscope.generation.greedy_generate` (``model.generate``, argmax) over left-padded
    batches: the attention mask marks the padding, from which ``generate`` derives the positions.
    """
    device = model_device(model)
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        tokens = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, p in enumerate(chunk):
            tokens[r, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[r, width - len(p) :] = 1
        for row in greedy_generate(model, tokens.to(device), max_new_tokens, mask.to(device)).tolist():
            out.append(row[: row.index(eos_id)] if eos_id is not None and eos_id in row else row)
    return out


Scorer = Callable[[str, str], float]


def generative_scores(model: Any, task: DownstreamTask, tokenizer: Any, max_length: int, rows: Sequence[int],
                      max_new_tokens: int, scorers: Sequence[Scorer] = (exact_match,), batch_size: int = 16) -> np.ndarray:
    """``[doc, scorer]``: each scorer's ``scorer(prediction, reference)`` of document ``rows`` of a prompt/response
    task; the prediction is the greedy continuation of its prompt, decoded without special tokens (module docstring)."""
    prompts = generation_prompts(task, tokenizer, max_length, rows, max_new_tokens)
    continuations = greedy_continuations(model, prompts, max_new_tokens, tokenizer.eos_token_id, batch_size)
    predictions = tokenizer.batch_decode(continuations, skip_special_tokens=True)
    scores = np.zeros((len(rows), len(scorers)))
    for i, (row, prediction) in enumerate(zip(rows, predictions)):
        for j, scorer in enumerate(scorers):
            scores[i, j] = float(scorer(prediction, task.reference(row)))
    return scores
