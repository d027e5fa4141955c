"""
The registry of continual-learning methods: a name (the YAML `method:` key, `--method`) -> the list of stage
plug-ins that make the method, all run by the one stage loop of `trainers.continual`.

| method | plug-ins | what changes in the stage |
|---|---|---|
| `fine_tuning` | - | nothing: plain sequential training |
| `replay` | `ReplayPlugin` | fine-tuning data: D_i ∪ r% of D_1..D_(i-1) |
| `ewc` | `EWCPlugin` | loss: + λ/2·Σ F·(θ−θ(i-1))² (online Fisher) |
| `eproj` | `EProjPlugin` | freezing: only the new connector trains, the LLM never |
| `pathweave` | `PathWeavePlugin` | adapter: adapter-in-adapter modules instead of LoRA, kept at inference |
| `mera` | `MergePlugin`, `RealignPlugin` | post-stage: merge with 1/i, realign connectors on r% replay |
| `merge_only`, `realign_only` | one of the two | ablations |
| `mr_lora` | `MRLoraPlugin` | adapter: one frozen LoRA expert per stage + a router LoRA |

`--realign R` (`ContinualConfig.realign`) appends `RealignPlugin(R)` to any method that supports it. Register your
own from your code; the config's `method_args` reach the factory through `method_args(config)`:

    from trainers.continual import StagePlugin
    from trainers.methods import register_method

    class FreezeLLMAfterFirstStage(StagePlugin):
        name = "freeze_llm_after_first"

        def configure_finetune(self, ctx):
            if ctx.stage > 1:  # stage 1 trains LoRA as usual; later stages only their new connector
                ctx.peft_config, ctx.finetune_trainable = None, ["connector:new"]

    @register_method("first_stage_llm")
    def first_stage_llm(config=None):
        return [FreezeLLMAfterFirstStage()]
"""

from collections.abc import Callable

from ..continual import MergePlugin, RealignPlugin, StagePlugin

MethodFactory = Callable[..., list[StagePlugin]]
METHODS: dict[str, MethodFactory] = {}
METHOD_ARGUMENTS: dict[str, tuple[str, ...]] = {}


def register_method(name: str, arguments: tuple[str, ...] = ()) -> Callable[[MethodFactory], MethodFactory]:
    """
    Decorator: register `factory(config) -> list[StagePlugin]` under `name`. `arguments` names the keys the method
    accepts in the config's `method_args`; any other key is refused before training.
    """

    def decorator(factory: MethodFactory) -> MethodFactory:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        METHODS[name] = factory
        METHOD_ARGUMENTS[name] = tuple(arguments)
        return factory

    return decorator


def method_args(config) -> dict:
    """The config's `method_args` (empty without a config)."""
    return dict(getattr(config, "method_args", None) or {})


def setting(config, name: str, default):
    """A config field, or `default` when there is no config (e.g. `get_method_plugins("ewc")` in a notebook)."""
    return getattr(config, name, default) if config is not None else default


def get_method_plugins(name: str, config=None) -> list[StagePlugin]:
    """
    The plug-ins of method `name`, plus a realign step when the config asks for one (`realign: R`). An unknown name,
    an unknown `method_args` key, or a realign the method cannot take is an error that says what is possible.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    unknown = sorted(set(method_args(config)) - set(METHOD_ARGUMENTS[name]))
    if unknown:
        raise ValueError(
            f"method_args {unknown} are not settings of method {name!r}; it takes {list(METHOD_ARGUMENTS[name])}"
        )
    plugins = METHODS[name](config)
    realign = setting(config, "realign", None)
    if realign is not None:
        refusing = [plugin.name for plugin in plugins if not plugin.supports_realign]
        if refusing:
            raise ValueError(f"method {name!r} cannot be followed by a realign step (plug-ins {refusing} refuse it)")
        if any(isinstance(plugin, RealignPlugin) for plugin in plugins):
            raise ValueError(f"method {name!r} already realigns (with replay_ratio); leave realign unset")
        plugins.append(RealignPlugin(ratio_percent=realign))
    return plugins


@register_method("fine_tuning")
def fine_tuning(config=None) -> list[StagePlugin]:
    """Plain sequential training: no merge, no realign."""
    return []


@register_method("mera")
def mera(config=None) -> list[StagePlugin]:
    """Merge then realign (the paper's method); the replay ratio r comes from the stage settings."""
    return [MergePlugin(), RealignPlugin()]


@register_method("merge_only")
def merge_only(config=None) -> list[StagePlugin]:
    """Ablation: Fine-Tuning + merging."""
    return [MergePlugin()]


@register_method("realign_only")
def realign_only(config=None) -> list[StagePlugin]:
    """Ablation: Fine-Tuning + realigning."""
    return [RealignPlugin()]


# The other built-in methods, one file each; importing them registers them.
from . import eproj, ewc, mr_lora, pathweave, replay  # noqa: E402, F401
