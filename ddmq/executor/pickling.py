"""Pickling the calls and the outcomes of tasks: the standard pickler where it is right, else cloudpickle.

The standard (C) pickler is several times faster than cloudpickle on many
small objects, but refers to functions and classes by module and name, which
is wrong for those of ``__main__`` (another process has another
``__main__``) and impossible for lambdas and closures. :func:`picklers`
gives the picklers to try in order: :class:`StandardPickler`, which refuses
what it would pickle wrongly, then ``cloudpickle.CloudPickler``, which
sends such things by value. ``pickle.loads`` reads what either makes.

cloudpickle is imported here only: the envelope format
(:mod:`ddmq.executor.envelope`) pickles through this module.
"""

from __future__ import annotations

import io
import pickle
import types
from typing import Any, Tuple, Type

import cloudpickle

#: Pickle protocol of payloads.
PROTOCOL = pickle.HIGHEST_PROTOCOL

#: Unpickle a payload (of either pickler).
loads = pickle.loads


class _ByValue(Exception):
    """The standard pickler met something that cloudpickle must send by value."""


class StandardPickler(pickle.Pickler):
    """The standard pickler, refusing (with :class:`_ByValue`) functions,
    classes and instances of ``__main__``. It fails by itself on lambdas and
    closures. ``reducer_override`` is not called for ints, strings, bytes,
    lists, tuples, dicts and the like, so plain data costs nothing extra.
    """

    def reducer_override(self, obj: Any) -> Any:
        owner = obj if isinstance(obj, (type, types.FunctionType)) else type(obj)
        if getattr(owner, "__module__", None) == "__main__":
            raise _ByValue
        return NotImplemented


_FAST_FIRST: Tuple[Type[pickle.Pickler], ...] = (StandardPickler, cloudpickle.CloudPickler)
_BY_VALUE: Tuple[Type[pickle.Pickler], ...] = (cloudpickle.CloudPickler,)


def picklers() -> tuple[type[pickle.Pickler], ...]:
    """The pickler classes to try, in order, until one pickles a value.

    Only cloudpickle while modules are registered with
    ``cloudpickle.register_pickle_by_value`` (the standard pickler would
    send their functions by name)."""
    return _BY_VALUE if _by_value_modules() else _FAST_FIRST


def _by_value_modules() -> Any:
    try:
        return cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES
    except AttributeError:  # an older or newer cloudpickle: always use it
        return True


class PickledOnce:
    """A function pickled once for all the chunks of one ``map``, which are
    sent at once and so carry the same function: pickling a function of
    ``__main__`` by value costs more than a chunk of small arguments. It
    unpickles as the function itself (``pickle.loads`` of its bytes)."""

    __slots__ = ("data",)

    def __init__(self, fn: Any):
        self.data = _dumps_first(fn)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return loads, (self.data,)

    @staticmethod
    def of(fn: Any) -> PickledOnce | None:
        """``fn`` pickled once; None if it cannot be pickled (each task that
        carries it then says why, when pickled on its own)."""
        try:
            return PickledOnce(fn)
        except Exception:  # noqa: BLE001 (whatever pickling raises)
            return None


def _dumps_first(value: Any) -> bytes:
    """``value`` pickled by the first of :func:`picklers` that can."""
    chosen = picklers()
    for pickler in chosen:
        buffer = io.BytesIO()
        try:
            pickler(buffer, protocol=PROTOCOL).dump(value)
            return buffer.getvalue()
        except Exception:
            if pickler is chosen[-1]:
                raise
    raise AssertionError("unreachable")


def dumps(value: Any) -> bytes:
    """``value`` pickled by cloudpickle (which pickles the most)."""
    return cloudpickle.dumps(value, protocol=PROTOCOL)


def callable_name(fn: Any) -> str:
    """The name of a function (or of any callable) for messages."""
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def pickling_error(text: str, err: BaseException) -> pickle.PicklingError:
    """A PicklingError saying ``text`` and what pickling raised."""
    return pickle.PicklingError(f"{text}: {type(err).__name__}: {err}")
