"""
PathWeave (Yu et al., 2024), the paper's adapter-in-adapter baseline, in the LLM.

Every linear layer of the LLM becomes a `PathWeaveLinear`: the frozen base layer plus one adapter per modality
(down r → up, rank r = the LoRA rank, scaled by lora_alpha/r like LoRA, the up projection zero-initialised). When
modality i arrives, each earlier modality's adapter gets an in-adapter for it (r → r, zero-initialised) in its
middle, and a learned gate mixes all adapters per token:

    y = W·x + Σ_j g_j(x) · s·U_j·(I + Σ_(k>j) N_jk)·D_j·x,     g(x) = softmax(G·x + b)

Stage i trains the new adapter (D_i, U_i), the in-adapters N_ji it added and the gate; earlier adapters and their
earlier in-adapters stay frozen. All adapters are kept at inference; since the gate depends on the input, they can
never be folded into W (the paper's latency: 111 vs 34 ms/token), though each adapter alone is a linear map whose
ΔW_j = s·U_j·(I + Σ N_jk)·D_j `get_delta_weight` returns.
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import AdapterFormat
from ..plugins import StageContext, StagePlugin
from .registry import register_method

PREFIX = "pathweave_"
CONFIG_FILE = "pathweave_config.json"
WEIGHTS_FILE = "pathweave.safetensors"


class PathWeaveLinear(nn.Module):
    """A frozen `nn.Linear` with per-modality adapters, their in-adapters and a gate (see the module docstring)."""

    adapter_layer_names = ("pathweave_down", "pathweave_up", "pathweave_in", "pathweave_gate")

    def __init__(self, base_layer: nn.Linear, r: int, lora_alpha: float):
        super().__init__()
        self.base_layer, self.r, self.scaling = base_layer, r, lora_alpha / r
        self.pathweave_down, self.pathweave_up = nn.ModuleDict(), nn.ModuleDict()
        self.pathweave_in = nn.ModuleDict()  # [earlier modality][later modality] -> in-adapter
        self.pathweave_gate: nn.Linear | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.pathweave_down)

    def add_modality(self, name: str):
        """A new adapter for `name`, an in-adapter for it in every earlier adapter, and a gate row (all neutral)."""
        if name in self.pathweave_down:
            raise ValueError(f"this layer already has a PathWeave adapter for {name!r}")
        weight = self.base_layer.weight
        make = {"device": weight.device, "dtype": weight.dtype}
        for earlier in self.modalities:
            if earlier not in self.pathweave_in:
                self.pathweave_in[earlier] = nn.ModuleDict()
            self.pathweave_in[earlier][name] = nn.Linear(self.r, self.r, bias=False, **make)
            nn.init.zeros_(self.pathweave_in[earlier][name].weight)
        self.pathweave_down[name] = nn.Linear(weight.shape[1], self.r, bias=False, **make)
        self.pathweave_up[name] = nn.Linear(self.r, weight.shape[0], bias=False, **make)
        nn.init.zeros_(self.pathweave_up[name].weight)
        gate = nn.Linear(weight.shape[1], len(self.modalities), **make)
        with torch.no_grad():  # the earlier rows keep what they learnt; the new row starts at zero
            gate.weight.zero_()
            gate.bias.zero_()
            if self.pathweave_gate is not None:
                gate.weight[:-1].copy_(self.pathweave_gate.weight)
                gate.bias[:-1].copy_(self.pathweave_gate.bias)
        self.pathweave_gate = gate

    def _middle(self, name: str) -> list[nn.Linear]:
        return list(self.pathweave_in[name].values()) if name in self.pathweave_in else []

    def adapter(self, name: str, x: torch.Tensor) -> torch.Tensor:
        hidden = self.pathweave_down[name](x)
        hidden = hidden + sum((inner(hidden) for inner in self._middle(name)), torch.zeros_like(hidden))
        return self.pathweave_up[name](hidden) * self.scaling

    def get_delta_weight(self, name: str) -> torch.Tensor:
        """ΔW of modality `name`'s adapter alone (with its in-adapters): s·U·(I + Σ N)·D."""
        middle = torch.eye(self.r, device=self.base_layer.weight.device, dtype=self.base_layer.weight.dtype)
        for inner in self._middle(name):
            middle = middle + inner.weight
        return self.pathweave_up[name].weight @ middle @ self.pathweave_down[name].weight * self.scaling

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if not self.modalities:
            return result
        x = x.to(self.pathweave_gate.weight.dtype)
        gates = torch.softmax(self.pathweave_gate(x), dim=-1)
        for index, name in enumerate(self.modalities):
            result = result + (gates[..., index : index + 1] * self.adapter(name, x)).to(result.dtype)
        return result


def pathweave_layers(model: nn.Module) -> dict[str, PathWeaveLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, PathWeaveLinear)}


def add_pathweave_modality(model, modality: str, r: int, lora_alpha: float) -> dict[str, PathWeaveLinear]:
    """Wrap every linear layer of the LLM in a `PathWeaveLinear` (first time only), then add `modality` to each."""
    layers = pathweave_layers(model)
    if not layers:
        linears = [(n, m) for n, m in model.language_model.named_modules() if isinstance(m, nn.Linear)]
        for name, linear in linears:
            parent_name, _, child = name.rpartition(".")
            parent = model.language_model.get_submodule(parent_name)
            setattr(parent, child, PathWeaveLinear(linear, r, lora_alpha))
        layers = pathweave_layers(model)
    for layer in layers.values():
        layer.add_modality(modality)
    return layers


class PathWeaveFormat(AdapterFormat):
    """`adapters/pathweave_config.json` (rank, alpha, modalities in order) + `adapters/pathweave.safetensors`."""

    name = "pathweave"

    def base_model(self, model):
        return model

    def save(self, model, directory: Path):
        layer = next(iter(pathweave_layers(model).values()))
        config = {"r": layer.r, "lora_alpha": layer.scaling * layer.r, "modalities": layer.modalities}
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        weights = {key: value.contiguous() for key, value in model.state_dict().items() if f".{PREFIX}" in key}
        save_file(weights, str(directory / WEIGHTS_FILE))

    def load(self, base, directory: Path, processor):
        config = json.loads((directory / CONFIG_FILE).read_text())
        for modality in config["modalities"]:
            add_pathweave_modality(base, modality, config["r"], config["lora_alpha"])
        result = base.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=False)
        missing = [key for key in result.missing_keys if f".{PREFIX}" in key]
        if missing or result.unexpected_keys:
            raise ValueError(f"{directory}: PathWeave weights do not fit: missing {missing[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]}")  # fmt: skip
        return base


class PathWeavePlugin(StagePlugin):
    """Swaps LoRA for adapter-in-adapter modules in the fine-tuning phase; they are kept, never folded."""

    name = "pathweave"

    def configure_finetune(self, ctx: StageContext):
        r, alpha = ctx.settings.lora_r, ctx.settings.lora_alpha
        # One adapter per stage's task (the modality's name in MERA's setting): a task stage on a learnt modality
        # gets its own adapter and in-adapters, as a new modality would.
        layers = add_pathweave_modality(ctx.model, ctx.task, r, alpha)
        new = re.escape(ctx.task)
        trains = rf"\.{PREFIX}(down|up)\.{new}\.|\.{PREFIX}in\.[^.]+\.{new}\.|\.{PREFIX}gate\."
        ctx.peft_config, ctx.finetune_trainable = None, ["connector:new", f"match:{trains}"]
        ctx.adapter_format = PathWeaveFormat()
        ctx.log["pathweave"] = {"layers": len(layers), "rank": r, "adapters": next(iter(layers.values())).modalities}


@register_method("pathweave")
def pathweave(config=None) -> list[StagePlugin]:
    """Adapter-in-adapter: per-modality adapters, in-adapters, a learned gate; LoRA's rank and alpha."""
    return [PathWeavePlugin()]
