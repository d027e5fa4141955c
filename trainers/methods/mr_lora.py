"""
MR-LoRA (MLLM-CL, Zhao et al., 2025): parameter isolation plus MLLM-based routing.

- Stage i trains one LoRA expert, the PEFT adapter `expert-i`, on D_i alone (with its new connector when the stage
  adds a modality; a task stage on a modality learnt before leaves that modality's connector as it is, so that the
  earlier experts keep theirs); an expert is never modified afterwards, and the base LLM never changes.
- After each stage the same MLLM with a small router LoRA (adapter `router`) is trained on a few samples of every
  stage so far to answer a multiple-choice question: which expert fits this input? The options list the experts'
  descriptions under labels (A, B, C, ...); an answer naming no label falls back to a default expert.
- `RoutedLoraModel.generate` routes every input, then answers each with its expert, in one call (PEFT's per-input
  `adapter_names`). Router accuracy is logged in stage.json (held-out router samples) and, through
  `routing_summary`, in every evaluation's output (an input's expected expert is the one of its task: the expert
  whose stage's data sets hold the input's, as MLLM-CL routes among domains and abilities).
"""

import json
import re
import string
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel

from ..checkpoint import AdapterFormat
from ..plugins import StageContext, StagePlugin
from ..sft import MeraSFTTrainer, llm_lora_config, paper_phase_config
from .registry import method_args, register_method
from .routing import RoutedLoraModel, RouterCollator, parse_choice, routed_batches

__all__ = ["MRLoraPlugin", "MRLoraFormat", "RoutedLoraModel", "parse_choice"]

ROUTER = "router"
QUESTION = "Which expert should answer this request? Reply with the label of one option."


class MRLoraFormat(AdapterFormat):
    """Every adapter in PEFT's layout (`adapters/<name>/`) plus `adapters/routing.json`."""

    name = "mr_lora"

    def base_model(self, model):
        return model.get_base_model()

    def save(self, model, directory: Path):
        model.save_pretrained(directory)
        (directory / "routing.json").write_text(json.dumps({"adapters": list(model.peft_config),
                                                            "routing": model.routing}, indent=2) + "\n")  # fmt: skip

    def load(self, base, directory: Path, processor):
        saved = json.loads((directory / "routing.json").read_text())
        first, *others = saved["adapters"]
        model = RoutedLoraModel(base, LoraConfig.from_pretrained(directory / first), adapter_name=first)
        for name in saved["adapters"]:
            model.load_adapter(directory / name, adapter_name=name)
        if saved["routing"] is not None:
            model.set_routing(saved["routing"], processor.tokenizer)
            model.set_adapter(saved["routing"]["experts"][-1]["adapter"])
        return model


class MRLoraPlugin(StagePlugin):
    """One frozen LoRA expert per stage and a router LoRA retrained after every stage."""

    name = "mr_lora"
    supports_realign = False  # each connector belongs to its own expert; a shared realign has no LLM to align to

    def __init__(self, router_samples: int = 20, router_eval_samples: int = 20, router_lora: dict | None = None,
                 router_args: dict | None = None, labels: list[str] | None = None, question: str = QUESTION,
                 descriptions: dict[str, str] | None = None, fallback: int = -1):  # fmt: skip
        self.router_samples, self.router_eval_samples = router_samples, router_eval_samples
        self.router_lora = {"r": 8, "lora_alpha": 16, **(router_lora or {})}
        self.router_args, self.question = dict(router_args or {}), question
        self.labels = list(labels or string.ascii_uppercase)
        self.descriptions, self.fallback = dict(descriptions or {}), fallback
        self.experts: list[dict] = []
        self.router_train: list[dict] = []
        self.router_eval: list[dict] = []

    def state_dict(self) -> dict:
        return {"experts": self.experts, "router_train": self.router_train, "router_eval": self.router_eval}

    def load_state_dict(self, state: dict):
        self.experts, self.router_train, self.router_eval = (
            state["experts"],
            state["router_train"],
            state["router_eval"],
        )

    def routing(self) -> dict:
        if len(self.experts) > len(self.labels):
            raise ValueError(f"{len(self.experts)} experts but only {len(self.labels)} option labels {self.labels}")
        options = "\n".join(f"{label}. {e['description']}" for label, e in zip(self.labels, self.experts))
        suffix = f"\n{self.question}\n{options}\nAnswer:"
        fallback = self.fallback % len(self.experts)
        return {"experts": self.experts, "labels": self.labels[: len(self.experts)], "suffix": suffix,
                "fallback": fallback, "router": ROUTER}  # fmt: skip

    def before_stage(self, ctx: StageContext):
        adapter, model = f"expert-{ctx.stage}", ctx.model
        torch.manual_seed(ctx.settings.seed + ctx.stage)  # the expert's initial LoRA A, whatever ran before
        lora = {key: ctx.settings.lora_settings()[key] for key in ("r", "lora_alpha", "lora_dropout")}
        if isinstance(model, PeftModel):
            model.add_adapter(
                adapter, replace(model.peft_config[self.experts[0]["adapter"]], inference_mode=False, **lora)
            )
        else:
            model = RoutedLoraModel(
                model, llm_lora_config(model, **ctx.settings.lora_settings()), adapter_name=adapter
            )
        model.set_adapter(adapter)
        ctx.model = model
        datasets = sorted(set(ctx.train_dataset["dataset"]) - {""})
        default = f"{ctx.task} ({', '.join(datasets)})" if datasets else ctx.task
        description = self.descriptions.get(ctx.task, default)
        expert = {"adapter": adapter, "modality": ctx.modality, "task": ctx.task, "datasets": datasets,
                  "description": description}  # fmt: skip
        self.experts = [*self.experts, expert]
        order = np.random.default_rng(ctx.settings.seed + ctx.stage).permutation(len(ctx.train_dataset)).tolist()
        picked = [dict(ctx.train_dataset[i], router_choice=len(self.experts) - 1) for i in order]
        self.router_train = [*self.router_train, *picked[: self.router_samples]]
        self.router_eval = [*self.router_eval, *picked[self.router_samples :][: self.router_eval_samples]]

    def configure_finetune(self, ctx: StageContext):
        adapter = re.escape(self.experts[-1]["adapter"])
        connector = ["connector:new"] if ctx.new_modality else []
        ctx.peft_config, ctx.finetune_trainable = None, [*connector, rf"match:\.lora_(A|B)\.{adapter}\."]
        ctx.adapter_format = MRLoraFormat()

    def after_stage(self, ctx: StageContext):
        model = ctx.model
        if ROUTER in model.peft_config:
            model.delete_adapter(ROUTER)
        router_config = replace(
            model.peft_config[self.experts[0]["adapter"]], inference_mode=False, **self.router_lora
        )
        model.add_adapter(ROUTER, router_config)
        model.set_adapter(ROUTER)
        routing = self.routing()
        model.set_routing(routing, ctx.processor.tokenizer)
        overrides = {"seed": ctx.settings.seed, **ctx.settings.phase_overrides("finetune"), **self.router_args}
        args = paper_phase_config("finetune", str(ctx.work_dir / ROUTER), **overrides)
        args.trainable = [rf"match:\.lora_(A|B)\.{ROUTER}\."]
        collator = RouterCollator(ctx.processor, routing)
        trainer = MeraSFTTrainer(model, args, Dataset.from_list(self.router_train), ctx.processor,
                                 data_collator=collator)  # fmt: skip
        loss = trainer.train().training_loss
        model.set_adapter(self.experts[-1]["adapter"])
        checked = self.router_eval or self.router_train
        chosen = [choice for batch in routed_batches(model, ctx.processor, checked) for choice in batch]
        correct = sum(choice == sample["router_choice"] for choice, sample in zip(chosen, checked))
        ctx.log["router"] = {"train_samples": len(self.router_train), "train_loss": loss,
                             "checked_on": "held-out" if self.router_eval else "training samples",
                             "samples": len(checked), "accuracy": correct / len(checked)}  # fmt: skip


@register_method("mr_lora", arguments=("router_samples", "router_eval_samples", "router_lora", "router_args",
                                       "labels", "question", "descriptions", "fallback"))  # fmt: skip
def mr_lora(config=None) -> list[StagePlugin]:
    """MLLM-CL's MR-LoRA: per-stage LoRA experts, an MLLM router LoRA; realign cannot follow it."""
    return [MRLoraPlugin(**method_args(config))]
