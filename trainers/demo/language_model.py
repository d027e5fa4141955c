"""
The demo's language model: a word-level tokenizer for the benchmark's language and a tiny Llama pre-trained on the
benchmark's text, so that stage 1 starts from a language model, as in the paper.

The pre-training texts are the benchmark's prompts followed by their answers, without media. Half of them are
preceded by the words of their item's attributes, shuffled and repeated ("red two circle red describe the picture .
a picture of two red circles"), where the media's feature tokens will later stand. So the model learns the language
and learns to read a description from its context, as any real LLM can; what it cannot know is which answer fits a
given input: a connector has to learn to write that description from the media, as LLaVA's pre-training aligns
visual tokens with word embeddings. (Without the context texts, a connector trained alone, with the LLM frozen, did
not move the tiny model's captions away from its text prior in 300 steps; with them, image captions were 79% exact.)

`pretrained_language_model` caches the result in a folder keyed by a hash of the vocabulary, the texts, the
hyper-parameters and the seed; a second call returns that folder without training. The folder loads with
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`, and holds `pretraining.json` with the
text loss before and after pre-training and how well the model answers with and without the context words.
"""

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from .benchmark import load_manifest, normalize_text, read_split
from .cache import atomic_folder, content_key, default_cache_dir

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PRETRAINING_REPORT = "pretraining.json"


def build_tokenizer(vocabulary: Iterable[str], model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """
    A word-level tokenizer: one token per vocabulary word, `<pad> <s> </s> <unk>` first (ids 0 to 3), split on
    whitespace and punctuation, BOS added in front. Decoding joins tokens with single spaces, so text in
    `normalize_text` form round-trips exactly: `decode(encode(text), skip_special_tokens=True) == text`.
    """
    words = sorted(set(vocabulary) - set(SPECIAL_TOKENS))
    bad = [word for word in words if normalize_text(word) != word]
    if bad:
        raise ValueError(f"vocabulary words must be single lower-case tokens (see normalize_text), got {bad[:10]}")
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # The BOS lives in the tokenizer's own post-processor, so that it survives save_pretrained / AutoTokenizer.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


@dataclass(frozen=True)
class TinyLlamaSettings:
    """Shape and pre-training of the demo's language model."""

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 256
    steps: int = 300
    """Optimiser steps of pre-training."""
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    context_fraction: float = 0.5
    """Share of the benchmark's pre-training texts preceded by their item's attribute words (`context_words`)."""
    max_context_words: int = 16
    """Longest such context, about as many tokens as an item's features."""


def context_words(attributes: dict[str, str], rng: np.random.Generator, max_words: int) -> str:
    """An item's attribute values, each at least once, repeated up to a random length, in random order."""
    words = list(attributes.values())
    length = int(rng.integers(len(words), max(len(words), max_words) + 1))
    words += [words[i] for i in rng.integers(0, len(words), length - len(words))]
    return " ".join(words[i] for i in rng.permutation(length))


def benchmark_rows(benchmark_dir: str | os.PathLike, split: str) -> list[dict]:
    manifest = load_manifest(benchmark_dir)
    return [row for name in manifest["settings"]["modalities"] for row in read_split(benchmark_dir, name, split)]


def benchmark_texts(
    benchmark_dir: str | os.PathLike,
    split: str = "train",
    context_fraction: float = 0.0,
    max_context_words: int = 16,
    seed: int = 0,
) -> list[str]:
    """
    Every sample of a split as text, `prompt answer`, across the benchmark's modalities; a `context_fraction` of
    them (drawn from `seed`) preceded by their item's attribute words.
    """
    rng = np.random.default_rng([seed, ("train", "test").index(split)])
    texts = []
    for row in benchmark_rows(benchmark_dir, split):
        text = f"{row['prompt']} {row['answer']}"
        if rng.random() < context_fraction:
            text = f"{context_words(row['attributes'], rng, max_context_words)} {text}"
        texts.append(text)
    return texts


@contextmanager
def single_thread():
    """
    Run torch on one CPU thread inside the block. For a model this small, a second thread gains little when the CPU
    is free and costs up to ten times the wall time when other processes compete for the cores; one thread also makes
    the weights independent of the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """`<s> text </s>` for every text, right-padded: input ids and labels (-100 on padding)."""
    sequences = [ids + [tokenizer.eos_token_id] for ids in tokenizer(list(texts))["input_ids"]]
    length = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), -100, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(ids)
    return input_ids, labels


@torch.no_grad()
def text_loss(model, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], batch_size: int = 256) -> float:
    """Mean next-token cross-entropy (nats per token, BOS excluded, EOS included) of `model` on `texts`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        input_ids, labels = _encode(tokenizer, texts[start : start + batch_size])
        logits = model(input_ids=input_ids, attention_mask=(labels != -100).long()).logits
        targets = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        )
        total += losses.item()
        count += int((targets != -100).sum())
    model.train(was_training)
    return total / count


def entropy_floor(texts: Sequence[str]) -> float:
    """
    Nats per token (EOS included) of the best model of `texts` that cannot see media: one that knows how often each
    whole text occurs. A language model pre-trained without media cannot beat it on these texts.
    """
    counts = Counter(texts)
    entropy = -sum(count / len(texts) * math.log(count / len(texts)) for count in counts.values())
    return entropy / (sum(len(text.split()) + 1 for text in texts) / len(texts))


@torch.no_grad()
def answer_accuracy(
    model, tokenizer: PreTrainedTokenizerFast, prefixes: Sequence[str], answers: Sequence[str]
) -> float:
    """Share of `answers` that `model` predicts token for token (greedy, teacher-forced) after their `prefixes`."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(prefixes), 256):
        prefix_ids = tokenizer(list(prefixes[start : start + 256]))["input_ids"]
        answer_ids = tokenizer(list(answers[start : start + 256]), add_special_tokens=False)["input_ids"]
        sequences = [p + a + [tokenizer.eos_token_id] for p, a in zip(prefix_ids, answer_ids)]
        length = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), length), tokenizer.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids)
        predicted = model(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long()).logits
        predicted = predicted.argmax(-1)
        for row, (prefix, ids) in enumerate(zip(prefix_ids, sequences)):
            correct += bool(
                (predicted[row, len(prefix) - 1 : len(ids) - 1] == input_ids[row, len(prefix) : len(ids)]).all()
            )
    model.train(was_training)
    return correct / len(prefixes)


def _context_accuracy(model, tokenizer, rows: list[dict], settings: "TinyLlamaSettings", seed: int) -> dict:
    """Answer accuracy on `rows` with their attribute words in front, and without them."""
    rng = np.random.default_rng([seed, 2])
    plain = [row["prompt"] for row in rows]
    context = [f"{context_words(row['attributes'], rng, settings.max_context_words)} {row['prompt']}" for row in rows]
    answers = [row["answer"] for row in rows]
    return {
        "with_context_words": answer_accuracy(model, tokenizer, context, answers),
        "without_context_words": answer_accuracy(model, tokenizer, plain, answers),
    }


def _texts_and_vocabulary(source, settings: "TinyLlamaSettings", seed: int) -> tuple[list[str], dict, list[str]]:
    """
    Pre-training texts, the plain texts to measure the loss on ({"train", "test"}), and the vocabulary, from a
    benchmark folder or a list of texts (learnt as they are).
    """
    if isinstance(source, (str, os.PathLike)):
        texts = benchmark_texts(source, "train", settings.context_fraction, settings.max_context_words, seed)
        plain = {split: benchmark_texts(source, split) for split in ("train", "test")}
        return texts, plain, load_manifest(source)["vocabulary"]
    texts = [normalize_text(text) for text in source]
    if not texts:
        raise ValueError("no pre-training texts given")
    return texts, {"train": texts}, sorted({word for text in texts for word in text.split()})


def pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    settings: TinyLlamaSettings,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train `model` on `texts` as a plain causal LM for `settings.steps` steps; returns the per-step losses."""
    input_ids, labels = _encode(tokenizer, texts)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.steps)
    model.train()
    losses = []
    order = torch.randperm(len(texts), generator=generator)
    position = 0
    for _ in tqdm(range(settings.steps), desc="pre-training the demo LM", disable=not progress, leave=False):
        if position + settings.batch_size > len(order):
            order, position = torch.randperm(len(texts), generator=generator), 0
        batch = order[position : position + settings.batch_size]
        position += settings.batch_size
        length = int((labels[batch] != -100).sum(1).max())
        batch_labels = labels[batch, :length]
        loss = model(
            input_ids=input_ids[batch, :length], attention_mask=(batch_labels != -100).long(), labels=batch_labels
        ).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def tiny_llama_config(vocab_size: int, settings: TinyLlamaSettings) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_attention_heads,
        intermediate_size=settings.intermediate_size,
        max_position_embeddings=settings.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
    )


def pretrained_language_model(
    cache_dir: str | os.PathLike | None,
    benchmark_dir_or_texts: str | os.PathLike | Sequence[str],
    seed: int = 0,
    settings: TinyLlamaSettings | None = None,
    progress: bool = True,
    **setting_overrides,
) -> Path:
    """
    The folder of a tiny Llama (and its tokenizer) pre-trained on the benchmark's text; trained on the first call,
    reused afterwards.

    Args:
        cache_dir: where model folders are kept (None: `$MERA_DEMO_CACHE` or `~/.cache/mera-mcl/demo`).
        benchmark_dir_or_texts: a benchmark folder (its train texts are learnt, `context_fraction` of them behind
            their attribute words; its test texts measured; its manifest's vocabulary tokenised) or a list of texts
            (learnt as they are).
        seed: seed of the initial weights and of the batch order.
        settings / setting_overrides: the model's shape and training (`TinyLlamaSettings` fields).

    Returns the model folder; its `pretraining.json` holds the text loss before and after pre-training and the
    share of test answers the model gets right with and without the attribute words in front.
    """
    known = {field.name for field in fields(TinyLlamaSettings)}
    unknown = sorted(set(setting_overrides) - known)
    if unknown:
        raise ValueError(f"unknown language-model settings {unknown}; known settings are {sorted(known)}")
    settings = TinyLlamaSettings(**{**asdict(settings or TinyLlamaSettings()), **setting_overrides})
    texts, evaluation, vocabulary = _texts_and_vocabulary(benchmark_dir_or_texts, settings, seed)
    texts_digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
    key = content_key({"vocabulary": vocabulary, "texts": texts_digest, "settings": asdict(settings), "seed": seed})
    folder = Path(cache_dir or default_cache_dir()) / f"tiny-llama-seed{seed}-{key}"
    if (folder / PRETRAINING_REPORT).is_file():
        return folder

    started = time.time()
    tokenizer = build_tokenizer(vocabulary)
    unknown_words = sorted({word for text in texts for word in text.split()} - set(tokenizer.get_vocab()))
    if unknown_words:
        raise ValueError(f"pre-training texts use words outside the vocabulary: {unknown_words[:10]}")
    with torch.random.fork_rng(), single_thread():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), settings))
        before = {split: text_loss(model, tokenizer, split_texts) for split, split_texts in evaluation.items()}
        losses = pretrain(model, tokenizer, texts, settings, seed, progress)
        after = {split: text_loss(model, tokenizer, split_texts) for split, split_texts in evaluation.items()}
        if isinstance(benchmark_dir_or_texts, (str, os.PathLike)):
            test_rows = benchmark_rows(benchmark_dir_or_texts, "test")
            accuracy = _context_accuracy(model, tokenizer, test_rows, settings, seed)
        else:
            accuracy = None
    report = {
        "text_loss_before": before,
        "text_loss_after": after,
        "uniform_loss": math.log(len(tokenizer)),
        "entropy_floor": entropy_floor(evaluation["train"]),
        "test_answer_accuracy": accuracy,
        "last_step_losses": losses[-10:],
        "texts": len(texts),
        "vocabulary_size": len(tokenizer),
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "settings": asdict(settings),
        "seed": seed,
        "seconds": round(time.time() - started, 1),
    }
    with atomic_folder(folder) as temporary:
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        (temporary / PRETRAINING_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return folder


def pretraining_report(model_dir: str | os.PathLike) -> dict:
    """The `pretraining.json` of a model folder made by `pretrained_language_model`."""
    return json.loads((Path(model_dir) / PRETRAINING_REPORT).read_text())
