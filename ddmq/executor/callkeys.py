"""The key of a call of a named run: which call is the same call, whoever made it.

A call's key is its function's key (:func:`function_key`: module and
qualified name plus a hash of its code: bytecode, constants and names,
recursively, not line numbers; and of what it is bound to: default values,
closure cells, a ``partial``'s arguments, a bound method's instance) and,
within it, the key of its arguments (:func:`call_keys`): the tuple of the
arguments itself when they are all ints (the int alone for one argument:
the common ``map(f, range(n))`` costs nothing; two such keys are equal only
if every int is), else their ``marshal`` bytes (version 2, which writes a
value the same way whatever its identity or interning) when they are plain
floats, strings, bytes, bools or None, else their pickle (keyword arguments
sorted by name); keys over :data:`KEY_MAX` bytes are replaced by a SHA-256.
Editing the body of the function changes its key, so a fixed bug runs
again; moving the function down a file does not; a change in a function it
calls, or in a global it reads, does not either. Where pickling is not
stable (sets of strings across interpreters, objects with unordered state),
the caller passes its own key, which replaces the arguments'.

A task envelope carries its calls' keys (:class:`TaskKeys`), which workers
echo into their results, so that any driver of the run can tell whose
outcome a result is (see :mod:`ddmq.executor.attach`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import marshal
import pickle
import secrets
import types
from itertools import chain, repeat
from typing import Any, Callable, List, NamedTuple, Sequence, Tuple, Union, cast

from . import pickling

#: Longest key of a call's arguments kept as is; longer ones are hashed.
KEY_MAX = 32
#: Most calls one task's keys may name (a bound for what an envelope unpacks to).
_MAX_CALLS = 1 << 24

#: Types whose marshal bytes are their value (marshal writes any other
#: object with the buffer protocol, a bytearray or a numpy array, as plain bytes).
_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})
# First bytes of the keys that are not marshal bytes (whose first byte is a
# type code under 0x80) or a pickle (0x80): they cannot be mistaken for them.
_KWARGS, _EXPLICIT, _HASHED, _UNIQUE = b"\xfc", b"\xfd", b"\xfe", b"\xff"
#: A call key: the arguments themselves when they are all ints (the int
#: when it is the only one; a tuple of ints equals another only if every int
#: does, and never equals an int), else bytes.
Key = Union[bytes, int, Tuple[int, ...]]


class TaskKeys(NamedTuple):
    """The keys of the calls of one task: their function's, and one per call."""

    function: str
    keys: Sequence[Key]  # a list, or a range (consecutive ints)

    def encode(self) -> str:
        """As the ``keys`` field of an envelope (ASCII): marshal of (function
        key, the keys), the keys as (first, count) when they are a range (a
        chunk of ``map(f, range(n))``)."""
        return base64.b64encode(marshal.dumps((self.function, pack_keys(self.keys)), 2)).decode("ascii")

    @staticmethod
    def decode(text: str) -> TaskKeys:
        """The keys an envelope's (verified) ``keys`` field holds; ValueError if malformed."""
        try:
            function, keys = marshal.loads(base64.b64decode(text.encode("ascii"), validate=True))
            if not isinstance(function, str):
                raise ValueError("no function key")
            return TaskKeys(function, unpack_keys(keys))
        except (binascii.Error, UnicodeEncodeError, EOFError, TypeError, ValueError) as err:
            raise ValueError(f"malformed call keys: {err}") from None


def _code_digest(code: types.CodeType, into: Any) -> None:
    into.update(code.co_code)
    into.update(repr(code.co_names).encode())
    into.update(repr(code.co_varnames).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, into)
        elif isinstance(const, frozenset):  # ``x in {"a", "b"}``: its order follows str hashes
            into.update(repr(sorted(map(repr, const))).encode())
        else:
            into.update(repr(const).encode())


def function_key(fn: Callable[..., Any]) -> str:
    """Module, qualified name and a hash of the code of ``fn`` (see the
    module docstring). What ``fn`` binds is part of it, pickled: the
    arguments of a ``functools.partial``, the instance of a bound method or
    of a callable object (whose ``__call__`` is the code)."""
    target: Any = fn
    bound: list[Any] = []
    while True:
        if isinstance(target, functools.partial):
            bound.append((target.args, target.keywords))
            target = target.func
        elif isinstance(target, types.MethodType):
            bound.append(target.__self__)
            target = target.__func__
        elif not isinstance(target, (types.FunctionType, types.BuiltinFunctionType, type)) \
                and isinstance(getattr(type(target), "__call__", None), types.FunctionType):
            bound.append(target)  # a callable object: its state and its class's __call__
            target = type(target).__call__
        else:
            break
    digest = hashlib.sha256()
    code = getattr(target, "__code__", None)
    if isinstance(code, types.CodeType):
        _code_digest(code, digest)
    if isinstance(target, types.FunctionType):  # what the code runs with, beside its arguments
        cells = tuple(_cell_value(cell) for cell in target.__closure__ or ())
        if target.__defaults__ or target.__kwdefaults__ or cells:
            bound.append((target.__defaults__, target.__kwdefaults__, cells))
    if bound:
        key = _arguments_key(tuple(bound), None)
        digest.update(key if isinstance(key, bytes) else marshal.dumps(key, 2))
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or pickling.callable_name(target)
    return f"{module}:{name}:{digest.hexdigest()[:16]}"


def _cell_value(cell: Any) -> Any:
    """What a closure's cell holds, for the key: a function (a decorator's
    ``func``, a recursive closure itself) by its code, anything else as is."""
    try:
        value = cell.cell_contents
    except ValueError:  # not filled yet
        return None
    if isinstance(value, types.FunctionType):
        digest = hashlib.sha256()
        _code_digest(value.__code__, digest)
        return ("function", value.__module__, value.__qualname__, digest.hexdigest())
    return value


def call_keys(arglists: Sequence[tuple[Any, ...]], kwargs: Sequence[dict[str, Any]] | None = None,
              explicit: Sequence[Any] | None = None) -> Sequence[Key]:
    """The keys of calls ``fn(*arglists[i], **kwargs[i])`` within their
    function (see the module docstring); ``arglists``: tuples, as many
    arguments in each (the calls of one ``map``, or one call). With
    ``explicit``, the caller's keys instead (each a str, bytes, int, float,
    bool, None, or a tuple of them: TypeError otherwise). Arguments that
    cannot be pickled get a key no other call has (their call fails to be
    sent anyway). The key of a call depends on that call only, never on the
    others; keys that are consecutive ints come as a ``range``."""
    if explicit is not None:
        return [_short(_EXPLICIT + _plain_bytes(key)) for key in explicit]
    if kwargs is None and arglists:
        flat = list(chain.from_iterable(arglists))
        types = set(map(type, flat))
        if types <= {int}:  # the common case, at no cost: the arguments are the key
            count = len(flat)
            if count != len(arglists):
                return list(arglists)  # the tuples of ints
            first = flat[0]  # one int each: itself
            if flat[-1] - first == count - 1 and flat == list(range(first, first + count)):
                return range(first, first + count)  # kept as spans, sent as (first, count)
            return flat
        if types <= _PLAIN and int not in types and flat:
            keys = list(map(marshal.dumps, arglists, repeat(2)))  # in C
            if max(map(len, keys)) > KEY_MAX:
                keys = list(map(_short, keys))
            return cast(List[Key], keys)
    return [_arguments_key(args, kwargs[index] if kwargs else None)
            for index, args in enumerate(arglists)]


def _short(key: bytes) -> bytes:
    """``key``, or its hash if it is longer than KEY_MAX."""
    return key if len(key) <= KEY_MAX else _HASHED + hashlib.sha256(key).digest()[:20]


def _is_plain(value: Any) -> bool:
    return type(value) in _PLAIN or (type(value) is tuple and all(map(_is_plain, value)))


def _plain_bytes(key: Any) -> bytes:
    if not _is_plain(key):
        raise TypeError(f"a run key must be a str, bytes, int, float, bool, None or a tuple of "
                        f"them, not {type(key).__name__}")
    return marshal.dumps(key, 2)


def _arguments_key(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Key:
    named = tuple(sorted(kwargs.items())) if kwargs else ()
    if not named and all(type(arg) is int for arg in args):
        return args[0] if len(args) == 1 else tuple(args)
    if _is_plain(tuple(args)) and _is_plain(named):
        return _short(_KWARGS + marshal.dumps((tuple(args), named), 2) if named
                      else marshal.dumps(tuple(args), 2))
    try:
        return _short(pickle.dumps((args, named), protocol=4))
    except Exception:  # noqa: BLE001 (whatever the standard pickler refuses)
        try:
            return _short(pickling.dumps((args, named)))
        except Exception:  # noqa: BLE001
            return _UNIQUE + secrets.token_bytes(16)


def is_key(value: Any) -> bool:
    """Whether ``value`` (read from an envelope) is a call key."""
    return type(value) in (bytes, int) or (type(value) is tuple
                                           and all(type(arg) is int for arg in value))


def pack_keys(keys: Sequence[Key]) -> Any:
    """Call keys as marshal takes them: a list, or (first, count) for a range."""
    if type(keys) is range and keys.step == 1:
        return (keys.start, len(keys))
    return keys if type(keys) is list else list(keys)


def unpack_keys(keys: Any) -> Sequence[Key]:
    """What :func:`_packed` made, back."""
    if type(keys) is tuple and len(keys) == 2 and type(keys[0]) is int and type(keys[1]) is int \
            and 0 <= keys[1] <= _MAX_CALLS:
        return range(keys[0], keys[0] + keys[1])
    if type(keys) is list and all(map(is_key, keys)):
        return keys
    raise ValueError("malformed call keys")
