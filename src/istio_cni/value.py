"""``Value``: a frozen, slotted record type that costs nothing to import.

The plugin pays its import graph on every pod ADD, and ``dataclasses`` pulls in
``inspect``/``ast``/``dis`` (about 20 ms here, more than all the netfilter work), so
values that cross module boundaries subclass ``Value`` instead of ``@dataclass``.

Declare fields with ``__slots__`` (order = positional order) and optional defaults in
``_defaults``; instances are immutable, compare and hash by their fields, and ``replace``
returns a modified copy. Annotate each field in the class body as well (annotations only, no
value: they cost nothing at run time and tell the type checker what ``__slots__`` holds)::

    class Point(Value):
        __slots__ = ("x", "y")
        _defaults = {"y": 0}
        x: int
        y: int
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from typing_extensions import Self

_MISSING = object()


class Value:
    __slots__: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}

    def __init__(self, *args: object, **kwargs: object) -> None:
        names = self.__slots__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}: too many positional arguments")
        set_ = object.__setattr__
        # strict=False: fewer args than names is normal, the rest come from kwargs and defaults
        val: object
        for name, val in zip(names, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}: {name} given twice")
            set_(self, name, val)
        for name in names[len(args) :]:
            val = kwargs.pop(name, _MISSING)
            if val is _MISSING:
                val = self._defaults.get(name, _MISSING)
                if val is _MISSING:
                    raise TypeError(f"{type(self).__name__}: missing field {name!r}")
            set_(self, name, val)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(kwargs)}")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()  # type(other) is type(self): a Value

    def __hash__(self) -> int:
        return hash((type(self).__name__,) + self._fields())

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def __reduce__(self) -> tuple[type[Self], tuple[object, ...]]:
        return (type(self), self._fields())

    def replace(self, **changes: object) -> Self:
        """A copy with ``changes`` applied (like ``dataclasses.replace``)."""
        cur = {n: getattr(self, n) for n in self.__slots__}
        unknown = set(changes) - set(cur)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(unknown)}")
        cur.update(changes)
        return type(self)(**cur)

    def as_dict(self) -> dict[str, object]:
        return {n: getattr(self, n) for n in self.__slots__}
