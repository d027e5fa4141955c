"""
The registry of continual-learning methods: a name (the YAML `method:` key, `--method`) -> a factory of the stage
plug-ins that make the method. Each method's file registers itself; `trainers.methods.get_method_plugins` builds
a method's plug-ins for a run.
"""

from collections.abc import Callable

from ..plugins import StagePlugin

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
