"""Tuning methods behind one interface (:class:`~medpeft.methods.base.Method`) and a registry.

Adding a method: write a module with a :class:`Method` subclass and its settings
dataclass, then call :func:`register` (built-ins: one line below). Its name becomes
a valid ``method:`` value and settings section of run configs, and adapter files,
``medpeft train``/``eval``/``predict`` handle it with no other change.
"""

from __future__ import annotations

from medpeft.errors import ConfigError, did_you_mean
from medpeft.methods.base import Method
from medpeft.methods.baselines import FullFineTuning, LinearProbe
from medpeft.methods.dora import DoRA, DoraSettings
from medpeft.methods.lora import LoRA, LoraSettings
from medpeft.methods.mor import MoR, MorSettings
from medpeft.methods.mora import MoRA, MoraSettings
from medpeft.methods.prompts import MissingAwarePromptsMethod, PromptSettings

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` under ``method.name`` (replacing a method of the same name)."""
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a registered method (tests of the extension point)."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method ``name``; ConfigError with a did-you-mean otherwise."""
    if name not in _REGISTRY:
        hint = did_you_mean(name, _REGISTRY)
        raise ConfigError(f"method: {name!r} is not one of {sorted(_REGISTRY)}{hint}")
    return _REGISTRY[name]


def method_for_settings(settings: object) -> Method:
    """The registered method whose settings class ``settings`` is (``None``: LoRA, MeLo's default)."""
    if settings is None:
        return get_method("lora")
    for method in _REGISTRY.values():
        if type(settings) is method.settings_type:
            return method
    known = sorted(m.settings_type.__name__ for m in _REGISTRY.values())
    raise ConfigError(f"settings: {type(settings).__name__} is not a method's settings; use one of {known}")


def method_names() -> list[str]:
    """Names of the registered methods."""
    return list(_REGISTRY)


def settings_types() -> dict[str, type]:
    """Settings dataclass of every registered method, by name."""
    return {name: method.settings_type for name, method in _REGISTRY.items()}


for _method in (LoRA(), MoRA(), MissingAwarePromptsMethod(), LinearProbe(), FullFineTuning(), MoR(), DoRA()):
    register(_method)

__all__ = [
    "DoraSettings",
    "LoraSettings",
    "Method",
    "MorSettings",
    "MoraSettings",
    "PromptSettings",
    "get_method",
    "method_for_settings",
    "method_names",
    "register",
    "settings_types",
    "unregister",
]
