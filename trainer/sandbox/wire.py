"""Plain data between the sandboxed program and its checker: one JSON line per message.

Values cross as tagged JSON and are rebuilt as exact built-in types (no pickle, no
objects of the program's classes), so whatever the program sends is only data: it
cannot carry an object whose `__eq__` says yes to everything. This file is also
inlined into the sandbox's child and checker sources (they run under `python -I`).
"""

import json

MAX_MESSAGE = 32 << 20  # bytes in one message; longer ones are refused


class WireError(ValueError):
    pass


def _enc(value, depth=0):
    if depth > 200:
        raise WireError("value nested too deeply")
    if value is None or type(value) in (bool, int, float, str):
        return value
    for kind, convert in ((int, int), (float, float), (str, str)):
        if isinstance(value, kind):
            return convert(value)
    for kind, tag in ((tuple, "tuple"), (list, "list"), (frozenset, "frozenset"), (set, "set")):
        if isinstance(value, kind):
            return {tag: [_enc(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    raise WireError("cannot send a value of type %s" % type(value).__name__)


def _dec(obj):
    t = type(obj)
    if obj is None or t in (bool, int, float, str):
        return obj
    if t is not dict or len(obj) != 1:
        raise WireError("malformed value")
    (tag, body), = obj.items()
    if tag == "bytes" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise WireError("malformed value")
    if tag == "list":
        return [_dec(v) for v in body]
    if tag == "tuple":
        return tuple(_dec(v) for v in body)
    if tag == "set":
        return {_dec(v) for v in body}
    if tag == "frozenset":
        return frozenset(_dec(v) for v in body)
    if tag == "dict":
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise WireError("malformed value")
            out[_dec(pair[0])] = _dec(pair[1])
        return out
    if tag == "complex" and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(body[0], body[1])
    raise WireError("malformed value")


def encode(value):
    return _enc(value)


def decode(obj):
    try:
        return _dec(obj)
    except (TypeError, RecursionError) as e:  # unhashable keys, absurd nesting
        raise WireError("malformed value: %s" % e) from None


def send(stream, message):
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def receive(stream):
    """The next message as a dict, or None at the end of the stream."""
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        return None
    if len(line) > MAX_MESSAGE or not line.endswith(b"\n"):
        raise WireError("message too long or cut short")
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise WireError("malformed message: %s" % e) from None
    if type(msg) is not dict:
        raise WireError("malformed message")
    return msg
