"""
The registry of continual-learning methods: a name (the YAML `method:` key, `--method`) -> the list of stage
plug-ins that make the method. Register your own from your code:

    from trainers.continual import StagePlugin
    from trainers.methods import register_method

    @register_method("my_method")
    def my_method(config):
        return [MyPlugin(strength=config.replay_ratio)]
"""

from collections.abc import Callable

from .continual import MergePlugin, RealignPlugin, StagePlugin

MethodFactory = Callable[..., list[StagePlugin]]
METHODS: dict[str, MethodFactory] = {}


def register_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator: register `factory(config) -> list[StagePlugin]` under `name`."""

    def decorator(factory: MethodFactory) -> MethodFactory:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        METHODS[name] = factory
        return factory

    return decorator


def get_method_plugins(name: str, config=None) -> list[StagePlugin]:
    """The plug-ins of method `name`; an unknown name is an error that lists the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name](config)


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
