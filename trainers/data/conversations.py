"""
Samples as conversations: one sample is one whole conversation (any number of turns) about zero or one media item,
and the loss falls on every assistant turn.

    {"id": "rs-17", "modality": "image", "media": "images/17.png", "task": "qa", "dataset": "RS",
     "messages": [{"role": "user", "content": "<image>\\nHow many planes?"}, {"role": "assistant", "content": "3"},
                  {"role": "user", "content": "Any ships?"}, {"role": "assistant", "content": "No"}]}

A row may also give its conversation as LLaVA writes it (`"conversations": [{"from": "human", "value": ...},
{"from": "gpt", "value": ...}, ...]`) or as one `prompt` / `answer` pair; `conversation_from_row` turns all three
into `messages`. A text-only row (no `media`) is a sample like any other.

Rendering goes through ONE function, `render_conversation`, with the processor's chat template (`MeraProcessor`'s:
the LLM's own behind a content-parts prelude when the processor has `use_chat_template`, else the plain one, turns
one after another, each answer after a space and ended by EOS): every assistant turn is what the template adds
between the conversation before that turn (with the generation prompt) and the conversation including it, so that
training sees exactly what generation will be prompted with. `encode_conversation` turns the rendered pieces into
token ids with media placeholders expanded, and labels that cover the assistant turns only; `encode_samples` builds
a padded batch (training, with labels) or a left-padded generation batch (the conversation up to its last user
turn).
"""

from collections import Counter
from collections.abc import Sequence

import torch

from modeling_mera import MeraBatch
from modeling_mera.processing_mera import mera_chat_template

from ..errors import UserError
from .media import read_sample_media

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
CONVERSATION_FORMATS = (
    '"messages": [{"role": "user"|"assistant"|"system", "content": "..."}, ...], or LLaVA\'s "conversations": '
    '[{"from": "human"|"gpt", "value": "..."}, ...], or "prompt" + "answer"'
)


def conversation_from_row(row: dict, where: str) -> list[dict]:
    """
    The row's conversation as `[{"role", "content"}, ...]`: from `messages`, LLaVA's `conversations`, or a
    `prompt` / `answer` pair (a list of answers trains on the first). Checked: an optional system turn first, then
    user and assistant turns taking turns, starting with the user and ending with the assistant.
    """
    if row.get("messages"):
        turns = [(turn.get("role"), turn.get("content")) if isinstance(turn, dict) else (None, turn)
                 for turn in row["messages"]]  # fmt: skip
    elif row.get("conversations"):
        turns = [(turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, turn)
                 for turn in row["conversations"]]  # fmt: skip
    elif row.get("prompt") not in (None, "") and row.get("answer") not in (None, "", []):
        answer = row["answer"][0] if isinstance(row["answer"], list) else row["answer"]
        turns = [("user", row["prompt"]), ("assistant", answer)]
    else:
        missing = [key for key in ("prompt", "answer") if row.get(key) in (None, "", [])]
        raise UserError(f"{where}: missing field(s) {missing}; a sample needs {CONVERSATION_FORMATS}")
    messages = []
    for index, (role, content) in enumerate(turns):
        if role not in ROLES or not isinstance(content, str):
            raise UserError(
                f"{where}: turn {index + 1} must have a role among {sorted(ROLES)} and text content, got "
                f"{(role, content)!r}"
            )
        messages.append({"role": ROLES[role], "content": content})
    spoken = messages[1:] if messages and messages[0]["role"] == "system" else messages
    expected = ["user", "assistant"] * (len(spoken) // 2)
    if not spoken or len(spoken) % 2 or [turn["role"] for turn in spoken] != expected:
        roles = [turn["role"] for turn in messages]
        raise UserError(
            f"{where}: a conversation is an optional system turn, then user and assistant turns taking turns, "
            f"starting with the user and ending with the assistant; got the roles {roles}"
        )
    return messages


def _template(processor):
    """The chat template conversations are rendered with: the processor's (the LLM's chat template behind the content
    parts prelude) with `use_chat_template`, else the processor's plain one (turns one after another, each answer
    after a space and ended by EOS), the format a base LLM's stages are trained in."""
    return processor.chat_template if processor.use_chat_template else mera_chat_template(None)


def render_conversation(
    processor, messages: Sequence[dict], add_generation_prompt: bool = False
) -> list[tuple[str, bool]]:
    """
    The conversation rendered with the processor's chat template (`_template`), as text pieces
    `(text, is_assistant)`. Every assistant turn is what the template adds between the conversation before that
    turn (with the generation prompt) and the conversation including it, so that training learns exactly what
    generation is prompted for. `add_generation_prompt` appends what prompts the next assistant turn.
    """
    template = _template(processor)

    def render(turns, generation_prompt: bool) -> str:
        if not turns:
            return ""
        return processor.apply_chat_template(
            list(turns), chat_template=template, add_generation_prompt=generation_prompt, tokenize=False
        )

    pieces, done = [], ""
    for index, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        prompt = render(messages[:index], True)
        full = render(messages[: index + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(
                "the chat template does not render a conversation as a prefix of its continuation; the assistant "
                "turns cannot be found in it (use a template that renders turn by turn, or use_chat_template=False)"
            )
        pieces += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    if add_generation_prompt or messages[-1]["role"] != "assistant":
        rest = render(messages, add_generation_prompt)
        if not rest.startswith(done):
            raise ValueError("the chat template does not render a conversation as a prefix of its continuation")
        pieces.append((rest[len(done) :], False))
    return [(text, trainable) for text, trainable in pieces if text]


def encode_conversation(
    processor, messages: Sequence[dict], add_generation_prompt: bool = False
) -> tuple[list[int], list[int], Counter]:
    """Token ids of the rendered conversation (placeholders expanded), labels (-100 outside assistant turns), and
    how many items of each modality its placeholders name. The tokenizer's BOS goes in front unless the template
    wrote it, as the processor decides it for a prompt."""
    pieces = render_conversation(processor, messages, add_generation_prompt) or [("", False)]
    bos = processor.tokenizer.bos_token
    ids, labels, counts = [], [], Counter()
    for index, (text, is_assistant) in enumerate(pieces):
        add_bos = index == 0 and not (bos is not None and text.startswith(bos))
        piece_ids, piece_counts = processor.encode_prompt(text, use_chat_template=False, add_special_tokens=add_bos)
        ids += piece_ids
        labels += piece_ids if is_assistant else [-100] * len(piece_ids)
        counts.update(piece_counts)
    return ids, labels, counts


def sample_messages(config, sample: dict, for_generation: bool = False) -> list[dict]:
    """
    The sample's conversation with its media placeholder in place (LLaVA's rule: in front of the first user turn,
    unless a turn names it already). `for_generation` keeps the turns up to the last user turn: the question
    whose answer is scored.
    """
    messages = [dict(turn) for turn in conversation_from_row(sample, f"sample {sample.get('id', '?')}")]
    if for_generation:
        messages = messages[: max(i for i, turn in enumerate(messages) if turn["role"] == "user") + 1]
    if sample.get("media") is not None:
        placeholder = config.modalities[sample["modality"]]["placeholder"]
        if not any(placeholder in turn["content"] for turn in messages):
            first = next(turn for turn in messages if turn["role"] == "user")
            first["content"] = f"{placeholder}\n{first['content']}"
    return messages


def encode_samples(
    processor, samples: Sequence[dict], padding_side: str = "right", for_generation: bool = False,
    max_length: int | None = None, feature_cache=None,
):  # fmt: skip
    """
    A batch for `MeraForCausalLM` from samples: each whole conversation with labels on its assistant turns
    (training), or each conversation up to its last user turn with the generation prompt (`for_generation`,
    usually left-padded). Media are read here, lazily; `max_length` cuts long conversations (never a media item).
    With a filled `feature_cache` (`trainers.data.feature_cache`) holding every item of a modality, that modality's
    media are not read: its input is the stored encoder output, `{"encoder_features": ...}`.
    """
    config = processor.config
    sequences, label_rows, items = [], [], {}
    for sample in samples:
        name = f"sample {sample.get('id', '?')}"
        modality, has_media = sample.get("modality"), sample.get("media") is not None
        if has_media and modality not in config.modalities:
            raise ValueError(f"{name}: modality {modality!r} is not in the model (it has {list(config.modalities)})")
        ids, labels, counts = encode_conversation(processor, sample_messages(config, sample, for_generation),
                                                  add_generation_prompt=for_generation)  # fmt: skip
        expected = Counter({modality: 1} if has_media else {})
        if counts != expected:
            raise ValueError(
                f"{name}: its conversation names media {dict(counts)} but the sample has "
                f"{dict(expected) or 'no media'}; a sample holds zero or one media item, named once"
            )
        if max_length is not None and len(ids) > max_length:
            if has_media:
                token = config.modality(modality).placeholder_token_id
                if ids[:max_length].count(token) != ids.count(token):
                    raise ValueError(f"{name}: max_length {max_length} would cut its {modality} placeholders")
            ids, labels = ids[:max_length], labels[:max_length]
        sequences.append(ids)
        label_rows.append(labels)
        if has_media:
            items.setdefault(modality, []).append(sample)
    batch = MeraBatch(processor.pad(sequences, None if for_generation else label_rows, padding_side))
    batch["modality_inputs"] = {}
    for name, modality_samples in items.items():
        stored = [feature_cache.lookup(sample) for sample in modality_samples] if feature_cache is not None else []
        if stored and all(features is not None for features in stored):
            batch["modality_inputs"][name] = {"encoder_features": torch.stack(stored)}
        else:
            media = [read_sample_media(sample["media"], config.modalities[name]) for sample in modality_samples]
            batch["modality_inputs"][name] = processor.prepare_modality(name, media)
    return batch


def assistant_spans(labels: Sequence[int]) -> list[list[int]]:
    """The runs of learnt label ids (not -100), in order: one per assistant turn."""
    spans, current = [], []
    for label in labels:
        if label == -100:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(int(label))
    return spans + ([current] if current else [])
