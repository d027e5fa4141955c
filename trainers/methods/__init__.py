"""
Continual-learning methods, one file each: a method is a list of stage plug-ins (`trainers.plugins.StagePlugin`)
that the one stage loop of `trainers.stage` runs, registered under the name the YAML `method:` key and `--method`
use (`trainers.methods.registry`).

| method | file | plug-ins | what changes in the stage |
|---|---|---|---|
| `fine_tuning` | fine_tuning.py | - | nothing: plain sequential training |
| `replay` | replay.py | `ReplayPlugin` | fine-tuning data: D_i ∪ r% of D_1..D_(i-1) |
| `ewc` | ewc.py | `EWCPlugin` | loss: + λ/2·Σ F·(θ−θ(i-1))² (online Fisher) |
| `eproj` | eproj.py | `EProjPlugin` | freezing: only the new connector trains, the LLM never |
| `pathweave` | pathweave.py | `PathWeavePlugin` | adapter: adapter-in-adapter modules, kept at inference |
| `mera` | mera.py | `MergePlugin`, `RealignPlugin` | post-stage: merge with 1/i, realign connectors on r% replay |
| `merge_only`, `realign_only` | mera.py | one of the two | ablations |
| `mr_lora` | mr_lora.py | `MRLoraPlugin` | adapter: one frozen LoRA expert per stage + a router LoRA |

`realign_ratio: R` (`--realign_ratio R`) appends `RealignPlugin(R)` to any method that supports it. A method's own
settings are its `method_args` (e.g. `ewc: {ewc_lambda: 1.0}`). Register your own from your code:

    from trainers.methods import register_method
    from trainers.plugins import StagePlugin

    class FreezeLLMAfterFirstStage(StagePlugin):
        name = "freeze_llm_after_first"

        def configure_finetune(self, ctx):
            if ctx.stage > 1:  # stage 1 trains LoRA as usual; later stages only their new connector
                ctx.peft_config, ctx.finetune_trainable = None, ["connector:new"]

    @register_method("first_stage_llm")
    def first_stage_llm(config=None):
        return [FreezeLLMAfterFirstStage()]
"""

from . import eproj, ewc, fine_tuning, mr_lora, pathweave, replay  # noqa: F401  (importing a method registers it)
from .mera import RealignPlugin, mera_plugins
from .registry import METHOD_ARGUMENTS, METHODS, method_args, register_method

__all__ = [
    "METHODS",
    "check_method_settings",
    "get_method_plugins",
    "mera_plugins",
    "register_method",
]


def get_method_plugins(name: str, config=None) -> list:
    """
    The plug-ins of method `name`, plus a realign step when the config asks for one (`realign_ratio: R`). An unknown
    name, an unknown `method_args` key, or a realign the method cannot take is an error that says what is possible.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    unknown = sorted(set(method_args(config)) - set(METHOD_ARGUMENTS[name]))
    if unknown:
        raise ValueError(
            f"method_args {unknown} are not settings of method {name!r}; it takes {list(METHOD_ARGUMENTS[name])}"
        )
    plugins = METHODS[name](config)
    realign_ratio = getattr(config, "realign_ratio", None)
    if realign_ratio is not None:
        refusing = [plugin.name for plugin in plugins if not plugin.supports_realign]
        if refusing:
            raise ValueError(f"method {name!r} cannot be followed by a realign step (plug-ins {refusing} refuse it)")
        if any(isinstance(plugin, RealignPlugin) for plugin in plugins):
            raise ValueError(f"method {name!r} already realigns (with replay_ratio); leave realign_ratio unset")
        plugins.append(RealignPlugin(realign_ratio=realign_ratio))
    return plugins


def check_method_settings(config) -> list:
    """
    Validate the method settings of a run config before anything is written or trained, and return its plug-ins:
    the method name, its `method_args` (names and values), `realign_ratio` after that method, and the replay ratios.
    Raises a `ValueError` that names the field. The run and `--dry_run` call it.
    """
    for field_name in ("replay_ratio", "realign_ratio"):
        value = getattr(config, field_name, None)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and (not is_number or not 0 < value <= 100):
            raise ValueError(f"{field_name} must be a percentage in (0, 100], got {value!r}")
    args = getattr(config, "method_args", None)
    if args is not None and not isinstance(args, dict):
        raise ValueError(f"method_args must be a mapping of setting names to values, got {args!r}")
    method = getattr(config, "method", "mera")
    try:
        return get_method_plugins(method, config)
    except TypeError as error:  # a plug-in's constructor refused a value's type
        raise ValueError(f"method_args {args} of method {method!r}: {error}") from None
