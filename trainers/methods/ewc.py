"""
EWC, online (Schwarz et al., 2018), as the paper's regularisation baseline.

After stage i-1 the diagonal Fisher of the autoregressive loss is estimated on a 1% subset of D_(i-1), from squared
per-sample gradients, and accumulated over stages: F ← γ·F + F_(i-1) (γ = 1: a plain sum). Stage i's fine-tuning adds

    λ/2 · Σ_j F_j · (θ_j − θ_(i-1),j)²

over the LLM weights the stage trains, in weight space: with LoRA, θ − θ(i-1) of a layer is its adapter's
ΔW = s·B·A (the adapter trains on θ(i-1), so its folded weight is θ(i-1) + ΔW); with a fully fine-tuned LLM it is
the weight minus its value when the stage began. The Fisher is kept with the stage (`plugins/ewc.safetensors`) for
the next one: float32, one value per tracked LLM weight, so it costs as much disk as the LLM itself.
"""

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from modeling_mera import MeraBatch

from ..data import MeraDataCollator, sample_replay
from ..distributed import sharded_launch
from ..merge import llm_parameter_names, unwrapped_name
from ..plugins import StageContext, StagePlugin
from ..sft import unwrap_mera
from .registry import method_args, register_method


def ewc_penalty(deviations: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
    """λ/2 · Σ F·d² over every weight in `deviations` (d = θ − θ(i-1)); each needs its Fisher entry."""
    missing = sorted(set(deviations) - set(fisher))
    if missing:
        raise ValueError(f"no Fisher information for {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    terms = [(fisher[name].to(d.device, d.dtype) * d.pow(2)).sum() for name, d in deviations.items()]
    return 0.5 * lam * torch.stack(terms).sum() if terms else torch.zeros(())


def fisher_diagonal(model: nn.Module, batches, names: list[str]) -> dict[str, torch.Tensor]:
    """
    The empirical diagonal Fisher: the mean over `batches` (one sample each) of the squared gradient of the model's
    loss with respect to every parameter in `names` (unwrapped names). Gradient flags are restored afterwards.
    """
    parameters = {unwrapped_name(n): p for n, p in model.named_parameters(remove_duplicate=False)}
    tracked = {name: parameters[name] for name in names}
    flags = {name: parameter.requires_grad for name, parameter in parameters.items()}
    for name, parameter in parameters.items():
        parameter.requires_grad_(name in tracked)
    fisher = {name: torch.zeros_like(parameter, dtype=torch.float32) for name, parameter in tracked.items()}
    was_training, count = model.training, 0
    model.eval()
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for name, parameter in tracked.items():
                fisher[name] += parameter.grad.detach().float().pow(2)
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for name, parameter in parameters.items():
            parameter.requires_grad_(flags[name])
    if count == 0:
        raise ValueError("the Fisher needs at least one sample")
    return {name: value / count for name, value in fisher.items()}


def tracked_weights(model: nn.Module, use_lora: bool) -> list[str]:
    """The LLM weights EWC protects: those LoRA adapts (every linear layer of the LLM), or every LLM weight."""
    mera = unwrap_mera(model)
    if not use_lora:
        return [unwrapped_name(name) for name in llm_parameter_names(mera)]
    return [
        unwrapped_name(f"model.language_model.{name}.weight")
        for name, module in mera.language_model.named_modules()
        if isinstance(module, nn.Linear) and not any(part.startswith("lora_") for part in name.split("."))
    ]


def weight_deviations(model: nn.Module, names: set[str], anchors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ − θ(i-1) per tracked weight, differentiable: trained weights minus their anchors, plus LoRA's ΔW."""
    deviations = {}
    for name, parameter in model.named_parameters():
        key = unwrapped_name(name)
        if key in anchors:
            deviations[key] = parameter - anchors[key].to(parameter.device)
    for name, module in model.named_modules():
        key = unwrapped_name(name) + ".weight"
        if isinstance(module, LoraLayer) and key in names:
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.get_delta_weight(adapter)
                    deviations[key] = deviations[key] + delta if key in deviations else delta
    return deviations


class EWCPlugin(StagePlugin):
    """Online EWC: the penalty during fine-tuning, the Fisher update after each stage."""

    name = "ewc"

    def __init__(self, ewc_lambda: float = 1.0, fisher_percent: float = 1.0, decay: float = 1.0):
        if ewc_lambda < 0 or not 0 < fisher_percent <= 100 or not 0 <= decay <= 1:
            raise ValueError(
                f"EWC needs ewc_lambda >= 0, fisher_percent in (0, 100] and decay in [0, 1]; got {ewc_lambda}, "
                f"{fisher_percent}, {decay}"
            )
        sharding = sharded_launch()
        if sharding:  # refused when the method is built, before any training
            raise ValueError(
                f"method ewc: its penalty reads whole LLM weights at every training step, which {sharding} splits "
                "across processes; run EWC with DDP or DeepSpeed ZeRO-2 (recipes/accelerate/zero2.yaml)"
            )
        self.ewc_lambda, self.fisher_percent, self.decay = ewc_lambda, fisher_percent, decay
        self.fisher: dict[str, torch.Tensor] = {}
        self.fisher_stages: list[int] = []
        self.anchors: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        if not self.fisher:
            return {}
        return {
            **{f"fisher.{name}": value for name, value in self.fisher.items()},
            "fisher_stages": self.fisher_stages,
        }

    def load_state_dict(self, state: dict):
        self.fisher = {key.removeprefix("fisher."): value for key, value in state.items() if key.startswith("fisher.")}
        self.fisher_stages = list(state.get("fisher_stages", []))

    def before_stage(self, ctx: StageContext):
        if ctx.stage > 1 and ctx.stage - 1 not in self.fisher_stages:
            raise ValueError(
                f"EWC at stage {ctx.stage} needs the Fisher of stage {ctx.stage - 1}, but the previous checkpoint has "
                f"it for stages {self.fisher_stages}; was that stage trained with method 'ewc'?"
            )

    def configure_finetune(self, ctx: StageContext):
        if "llm" in ctx.finetune_trainable:  # a full fine-tune overwrites θ(i-1): keep it as the anchor
            self.anchors = {
                unwrapped_name(name): parameter.detach().clone()
                for name, parameter in ctx.model.named_parameters()
                if unwrapped_name(name) in self.fisher
            }

    def extra_loss(self, model, inputs: dict) -> torch.Tensor | None:
        if not self.fisher:
            return None
        return ewc_penalty(weight_deviations(model, set(self.fisher), self.anchors), self.fisher, self.ewc_lambda)

    def after_stage(self, ctx: StageContext):
        subset = sample_replay(ctx.train_dataset, self.fisher_percent, seed=ctx.settings.seed + ctx.stage)
        collator = MeraDataCollator(ctx.processor)
        device = unwrap_mera(ctx.model).device
        batches = (MeraBatch(collator([sample])).to(device) for sample in subset)
        names = tracked_weights(ctx.model, ctx.settings.use_lora)
        stage_fisher = fisher_diagonal(ctx.model, batches, names)
        self.fisher = {
            name: self.decay * self.fisher[name] + value if name in self.fisher else value
            for name, value in ((name, value.cpu()) for name, value in stage_fisher.items())
        }
        self.fisher_stages = [*self.fisher_stages, ctx.stage]
        self.anchors = {}
        ctx.log["ewc"] = {
            "lambda": self.ewc_lambda,
            "fisher_samples": len(subset),
            "fisher_stages": self.fisher_stages,
        }


@register_method("ewc", arguments=("ewc_lambda", "fisher_percent", "decay"))
def ewc(config=None) -> list[StagePlugin]:
    """Online EWC with λ = `method_args.ewc_lambda` (paper: 1), the Fisher from 1% of each stage's data."""
    return [EWCPlugin(**method_args(config))]
