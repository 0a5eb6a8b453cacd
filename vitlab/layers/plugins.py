"""Plug-in layers of the ViT backbone: one class per layer, chosen by a config node's ``_target_``.

A kind of plug-in (the attention layers, the position encodings) is a :class:`PluginKind`: its
registry of names, what the backbone passes every class (``backbone_args``) and the base class its
classes derive from. ``_target_`` is a registered name or the dotted path of a class in the user's own
package; the rest of the node are the class's options. The class's constructor is its typed config:
:meth:`PluginKind.config` derives a frozen dataclass from its keyword options (the defaults written
once, in the constructor), and the constructor checks its own arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from torch import nn

from vitlab.errors import nearest_key_hint

__all__ = ["PluginKind"]


class PluginKind:
    """The classes of one node of the backbone (``attention``, ``position``).

    Args:
        node: the node's key, which starts every error message (``attention._target_: ...``).
        noun: what a class is called in messages (``attention``, ``position encoding``).
        backbone_args: the constructor arguments the backbone passes; the others are options.
        example: a class path shown where a ``_target_`` is wrong (``mypkg.attn.MyAttention``).
        base: the class every plug-in of the kind must derive from.
    """

    def __init__(self, node: str, noun: str, backbone_args: tuple[str, ...], example: str,
                 base: type[nn.Module] = nn.Module) -> None:
        self.node, self.noun, self.backbone_args, self.example, self.base = node, noun, backbone_args, example, base
        #: The classes by name (``model.net.<node>._target_``).
        self.registry: dict[str, type[nn.Module]] = {}
        self._options: dict[type, dict[str, inspect.Parameter]] = {}
        self._configs: dict[type, type] = {}

    def register(self, name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
        """Class decorator: make ``name`` select the class in ``<node>._target_``."""

        def add(cls: type[nn.Module]) -> type[nn.Module]:
            if name in self.registry:
                raise RuntimeError(f"{self.noun} {name!r} is registered twice")
            self.registry[name] = cls
            return cls

        return add

    def resolve(self, target: str) -> type[nn.Module]:
        """The class a ``_target_`` names: a registered name, or ``package.module.Class``."""
        names = ", ".join(self.registry)
        if not isinstance(target, str) or not target:
            raise ValueError(f"{self.node}._target_: give a registered name ({names}) or a class path")
        if target in self.registry:
            return self.registry[target]
        if "." not in target:
            close = difflib.get_close_matches(target, self.registry, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"{self.node}._target_: unknown {self.noun} {target!r}; {hint}use one of {names} "
                             f"or the path of your own class ({self.example})")
        module_name, _, class_name = target.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(
                f"{self.node}._target_: cannot import {module_name} ({err}); is its package on the Python path?"
            ) from None
        cls = getattr(module, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"{self.node}._target_: {target} is not an nn.Module class")
        if not issubclass(cls, self.base):
            raise ValueError(f"{self.node}._target_: {target} is not a {self.noun} class; "
                             f"subclass {self.base.__module__}.{self.base.__qualname__}")
        return cls

    def options(self, cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
        """A class's own options: the keyword arguments of its constructor (and, through ``**kwargs``,
        of its bases' constructors) beyond ``backbone_args``, each with its default."""
        if cls not in self._options:
            options: dict[str, inspect.Parameter] = {}
            for klass in cls.__mro__:
                if klass is nn.Module or "__init__" not in vars(klass):
                    continue
                forwards = False
                for p in list(inspect.signature(klass.__init__).parameters.values())[1:]:
                    if p.kind is p.VAR_KEYWORD:
                        forwards = True
                    elif p.kind is not p.VAR_POSITIONAL and p.name not in self.backbone_args:
                        if p.default is p.empty:
                            raise TypeError(f"{cls.__name__}.{p.name}: every {self.node} option needs a default")
                        options.setdefault(p.name, p)
                if not forwards:
                    break
            self._options[cls] = options
        return self._options[cls]

    def target_name(self, cls: type[nn.Module]) -> str:
        """The ``_target_`` of a class: its registered name, else its path."""
        registered = [name for name, klass in self.registry.items() if klass is cls]
        return registered[0] if registered else f"{cls.__module__}.{cls.__qualname__}"

    def config_type(self, cls: type[nn.Module]) -> type:
        """The frozen dataclass of a class's config: ``_target_``, then every option with its default."""
        if cls not in self._configs:
            fields = [("_target_", str, field(default=self.target_name(cls)))]
            fields += [(p.name, p.annotation, field(default=p.default)) for p in self.options(cls).values()]
            config = dataclasses.make_dataclass(f"{cls.__name__}Config", fields, frozen=True)
            config.__doc__ = f"The options of :class:`{cls.__name__}`: its constructor's keyword arguments, same defaults."
            self._configs[cls] = config
        return self._configs[cls]

    def config(self, spec: str | Mapping[str, Any] | Any, **options: Any) -> Any:
        """The typed config of a class: a frozen dataclass with ``_target_`` and every option of the
        class (its defaults, then ``options``). ``spec`` is a ``_target_``, a node
        (``{"_target_": ..., **options}``, e.g. from the command line) or a config; an unknown option
        is one error line with the nearest name."""
        if dataclasses.is_dataclass(spec):
            spec = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
        node = dict(spec) if isinstance(spec, Mapping) else {"_target_": spec}
        node.update(options)
        if "_target_" not in node:
            raise ValueError(f"{self.node}._target_: missing; use one of {', '.join(self.registry)} or a class path")
        cls = self.resolve(node.pop("_target_"))
        known = self.options(cls)
        for key in node:
            if key not in known:
                raise ValueError(f"{self.node}.{key}: {cls.__name__} has no such option; {nearest_key_hint(key, known)}")
        plain = {k: tuple(v) if isinstance(v, list) else v for k, v in node.items()}
        return self.config_type(cls)(**plain)

    def build(self, config: Any, **backbone: Any) -> nn.Module:
        """The layer of a config of :meth:`config`, given the backbone's arguments."""
        options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "_target_"}
        return self.resolve(config._target_)(**backbone, **options)
