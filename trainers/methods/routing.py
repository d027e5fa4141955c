"""
MR-LoRA's routed model: a PEFT `PeftModelForCausalLM` holding one LoRA expert per stage and a router LoRA, whose
`generate` first asks the router which expert fits each input and then answers every input with its expert.

The router's prompt is the input's own prompt, as the processor encoded it, followed by the router question and the
options (`routing["suffix"]`); the router answers an option label. Training (`RouterCollator`) and inference
(`RoutedLoraModel.route`) build that prompt the same way, token by token, so that what the router learnt is what it
is asked.
"""

import re
from collections import Counter

import torch
from peft import PeftModelForCausalLM

from ..data import encode_samples


def parse_choice(answer: str, labels: list[str], fallback: int) -> tuple[int, bool]:
    """The option whose label the answer names first (as a whole word), or (`fallback`, False) when none is."""
    found = [(m.start(), i) for i, label in enumerate(labels) if (m := re.search(rf"\b{re.escape(label)}\b", answer))]
    return (min(found)[1], True) if found else (fallback, False)


def encode_prompts(processor, samples: list[dict], padding_side: str):
    """The samples' conversations up to their last user turn, with media, as generation prompts them."""
    return encode_samples(processor, samples, padding_side, for_generation=True)


class RouterCollator:
    """Router training batches: each prompt + the router question, then the label of the sample's expert."""

    def __init__(self, processor, routing: dict):
        tokenizer = processor.tokenizer
        self.processor = processor
        self.suffix = tokenizer(routing["suffix"], add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.answers = [tokenizer(label, add_special_tokens=False)["input_ids"] + eos for label in routing["labels"]]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __call__(self, samples: list[dict]) -> dict:
        batch = encode_prompts(self.processor, samples, padding_side="right")
        sequences, targets = [], []
        for sample, ids, mask in zip(samples, batch["input_ids"], batch["attention_mask"]):
            prompt = ids[mask.bool()].tolist() + self.suffix
            answer = self.answers[sample["router_choice"]]
            sequences.append(prompt + answer)
            targets.append([-100] * len(prompt) + answer)
        length = max(map(len, sequences))
        rows = [
            (s + [self.pad_id] * (length - len(s)), t + [-100] * (length - len(t))) for s, t in zip(sequences, targets)
        ]
        return {
            "input_ids": torch.tensor([ids for ids, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences]),
            "labels": torch.tensor([labels for _, labels in rows]),
            "modality_inputs": batch["modality_inputs"],
        }


class RoutedLoraModel(PeftModelForCausalLM):
    """
    A `PeftModelForCausalLM` with LoRA experts and a router. `set_routing(routing, tokenizer)` turns routing on;
    `routing` holds `experts` ([{adapter, modality, task, datasets, description}]), option `labels`, the prompt
    `suffix`, the `fallback` expert index and the `router` adapter's name. Until then it behaves like any `PeftModel`.
    """

    routing: dict | None = None

    def set_routing(self, routing: dict, tokenizer):
        self.routing, self.tokenizer = routing, tokenizer
        self.routing_log: list[dict] = []

    def expected_expert(self, sample: dict) -> int | None:
        """The expert of the task whose data sets hold the sample's, else of the sample's modality when one expert
        alone has it (MERA's setting), else None."""
        experts = self.routing["experts"]
        by_dataset = [i for i, expert in enumerate(experts) if sample.get("dataset") in expert.get("datasets", ())]
        by_modality = [i for i, expert in enumerate(experts) if expert["modality"] == sample.get("modality")]
        return by_dataset[0] if len(by_dataset) == 1 else by_modality[0] if len(by_modality) == 1 else None

    def expected_experts(self, input_ids: torch.Tensor) -> list[int | None]:
        """Per input, the expert of the one modality whose placeholders it holds (None for none or several)."""
        counts = Counter(expert["modality"] for expert in self.routing["experts"])
        by_modality = {e["modality"]: i for i, e in enumerate(self.routing["experts"]) if counts[e["modality"]] == 1}
        placeholder_ids = self.get_base_model().config.placeholder_token_ids
        expected = []
        for row in input_ids:
            present = [name for name, token in placeholder_ids.items() if bool((row == token).any())]
            expected.append(by_modality.get(present[0]) if len(present) == 1 else None)
        return expected

    @torch.no_grad()
    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **modality_inputs) -> list:
        """The expert index the router picks for every (left-padded) prompt; each decision goes to `routing_log`."""
        if self.routing is None:
            raise ValueError("this model has no trained router yet (set_routing was never called)")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("routing appends the router's question to every prompt: pad the prompts on the left")
        tokenizer, labels = self.tokenizer, self.routing["labels"]
        suffix = tokenizer(self.routing["suffix"], add_special_tokens=False)["input_ids"]
        suffix = torch.tensor(suffix, device=input_ids.device).expand(len(input_ids), -1)
        ids, mask = torch.cat([input_ids, suffix], 1), torch.cat([attention_mask, torch.ones_like(suffix)], 1)
        longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        output = super().generate(
            input_ids=ids, attention_mask=mask, adapter_names=[self.routing["router"]] * len(ids),
            max_new_tokens=longest + 1, do_sample=False, num_beams=1, pad_token_id=pad_id, **modality_inputs,
        )  # fmt: skip
        answers = tokenizer.batch_decode(output[:, ids.shape[1] :], skip_special_tokens=True)
        decisions = [parse_choice(answer, labels, self.routing["fallback"]) for answer in answers]
        for (choice, parsed), expected in zip(decisions, self.expected_experts(input_ids)):
            self.routing_log.append({"expert": choice, "parsed": parsed, "expected": expected})
        return [choice for choice, _ in decisions]

    def generate(self, *args, **kwargs):
        """Route every input, then generate each answer with the chosen expert (unless `adapter_names` is given)."""
        if self.routing is None or "adapter_names" in kwargs:
            return super().generate(*args, **kwargs)
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        keys = ("modality_inputs", *self.get_base_model().config.modalities)
        choices = self.route(input_ids, kwargs.get("attention_mask"), **{k: kwargs[k] for k in keys if k in kwargs})
        adapters = [self.routing["experts"][choice]["adapter"] for choice in choices]
        return super().generate(*args, adapter_names=adapters, **kwargs)

    def reset_routing(self):
        self.routing_log = []

    def routing_summary(self, expected: list[int | None] | None = None) -> dict:
        """
        Routing since the last reset: inputs, accuracy, fallbacks, expert counts. The accuracy is against
        `expected` (one expert index per routed input, in routing order; e.g. `expected_expert` of each sample),
        by default against each input's modality where one expert alone has it.
        """
        log, experts = getattr(self, "routing_log", []), (self.routing or {}).get("experts", [])
        if expected is not None and len(expected) != len(log):
            raise ValueError(f"{len(expected)} expected experts for {len(log)} routed inputs")
        targets = expected if expected is not None else [entry["expected"] for entry in log]
        judged = [(entry, target) for entry, target in zip(log, targets) if target is not None]
        correct = sum(entry["expert"] == target for entry, target in judged)
        return {
            "inputs": len(log),
            "accuracy": correct / len(judged) if judged else None,
            "fallbacks": sum(not entry["parsed"] for entry in log),
            "chosen": dict(Counter(experts[entry["expert"]]["adapter"] for entry in log)),
        }


def routed_batches(model: RoutedLoraModel, processor, samples: list[dict], batch_size: int = 8):
    """The router's choices for `samples`, batch by batch (prompts left-padded, as in generation)."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            batch = encode_prompts(processor, samples[start : start + batch_size], "left").to(model.device)
            yield model.route(batch["input_ids"], batch["attention_mask"], modality_inputs=batch["modality_inputs"])
    finally:
        model.train(was_training)
