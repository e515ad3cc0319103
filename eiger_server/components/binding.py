"""Explicit bindings of image_par rows to the components that serve them.

A local row of the table (table.py) names the methods that serve it, as the
component class's unbound functions::

    local=Local(read=Acquisition.get_preset, write=Acquisition.set_preset)

``Local`` checks at declaration, so at import: every method belongs to a
class registered with ``@component``, all to the same one, and each accepts
the arguments spec sends for its role (a read none, a write a value, a
command none).  A typo or a wrong method fails when the table is imported,
not when spec asks.  The controller maps each registered class to its
instance of it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T", bound=type)

# Component classes that may serve rows (filled by @component).
_COMPONENTS: List[type] = []


class BindingError(TypeError):
    """A row of the table names something that cannot serve it."""


def component(cls: T) -> T:
    """Register ``cls`` as a component whose methods may serve image_par rows."""
    if cls not in _COMPONENTS:
        _COMPONENTS.append(cls)
    return cls


def registered_components() -> Tuple[type, ...]:
    return tuple(_COMPONENTS)


def _owner(fn: Callable[..., Any]) -> type:
    """The registered component class that defines ``fn``."""
    if not inspect.isfunction(fn):
        raise BindingError(f"{fn!r} is not a method of a component class; name the "
                           "unbound method, e.g. Acquisition.get_seqid")
    for cls in _COMPONENTS:
        if cls.__dict__.get(fn.__name__) is fn:
            return cls
    raise BindingError(f"{fn.__qualname__} is not a method of a registered component "
                       "(decorate its class with @component)")


def _arity(fn: Callable[..., Any]) -> Tuple[int, Optional[int]]:
    """(fewest, most) positional arguments ``fn`` takes after self; most None: any."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    low, high = 0, 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return low, None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            if p.default is p.empty:
                low += 1
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise BindingError(f"{fn.__qualname__} has a required keyword argument "
                               f"'{p.name}'; spec passes words, not keywords")
    return low, high


def _takes(arity: Tuple[int, Optional[int]], nargs: int) -> bool:
    low, high = arity
    return low <= nargs and (high is None or nargs <= high)


# What spec sends for each role: image_par(unit, "name") reads and runs with
# no argument, image_par(unit, "name", value) writes one value.
ROLE_ARGS = {"read": 0, "write": 1, "run": 0}


@dataclass(frozen=True)
class Local:
    """The methods of one component that serve one row."""

    read: Optional[Callable[..., Any]] = None
    write: Optional[Callable[..., Any]] = None
    run: Optional[Callable[..., Any]] = None
    component: type = field(init=False)
    arities: Dict[str, Tuple[int, Optional[int]]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        given = {role: fn for role, fn in self.roles() if fn is not None}
        if not given:
            raise BindingError("a local binding needs read=, write= or run=")
        owners = {role: _owner(fn) for role, fn in given.items()}
        if len(set(owners.values())) != 1:
            raise BindingError("one row is served by one component, not "
                               + ", ".join(sorted(c.__qualname__ for c in set(owners.values()))))
        arities = {role: _arity(fn) for role, fn in given.items()}
        for role, arity in arities.items():
            if not _takes(arity, ROLE_ARGS[role]):
                raise BindingError(f"{given[role].__qualname__} cannot {role} with "
                                   f"{ROLE_ARGS[role]} argument(s) from spec")
        object.__setattr__(self, "component", next(iter(owners.values())))
        object.__setattr__(self, "arities", arities)

    def roles(self) -> Sequence[Tuple[str, Optional[Callable[..., Any]]]]:
        return (("read", self.read), ("write", self.write), ("run", self.run))

    def method(self, role: str) -> Callable[..., Any]:
        fn = getattr(self, role)
        if fn is None:
            raise BindingError(f"this binding has no {role} method")
        return fn

    def accepts(self, role: str, nargs: int) -> bool:
        """True when the ``role`` method takes ``nargs`` words from spec."""
        return _takes(self.arities[role], nargs)

    def check_access(self, name: str, access: str, set_reads: bool) -> None:
        """The methods given are those the row's access needs, no more."""
        needed = {"R": {"read"}, "RW": {"read", "write"}, "W": {"write"},
                  "--": {"run"}}.get(access)
        given = {role for role, fn in self.roles() if fn is not None}
        if needed is None or given != needed:
            raise BindingError(f"image_par row '{name}' ({access}) needs "
                               f"{', '.join(sorted(needed or ()))}= but names "
                               f"{', '.join(sorted(given))}=")
        if set_reads and not self.accepts("read", 1):
            raise BindingError(f"image_par row '{name}' reads with an argument, but "
                               f"{self.method('read').__qualname__} takes none")
