"""Text from spec to values and back.

spec reads answers as text: numbers in plain decimal, booleans as 1/0, lists
space-separated. Everything that parses or formats a value uses these.
"""
from __future__ import annotations

import json
import math
from typing import Any, List, Sequence

import numpy as np

from eiger_server.errors import ParameterError

TRUE_WORDS = {"1", "true", "yes", "on", "enabled", "enable"}
FALSE_WORDS = {"0", "false", "no", "off", "disabled", "disable"}


def format_value(value: Any) -> str:
    """A value as spec wants it: plain decimal numbers, 1/0, space-separated lists
    (nested lists, like the monitor's image list, as JSON)."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return np.format_float_positional(value, trim="-")
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, (list, tuple, dict)) for item in value):
            return json.dumps(value)
        return " ".join(format_value(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def parse_bool(text: str, what: str) -> bool:
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ParameterError(f"{what}: '{text}' is not a yes/no value; use 1 or 0")


def parse_number(text: Any, what: str, integer: bool = False) -> Any:
    """A finite float (or int with ``integer``) from spec's text."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise ParameterError(f"{what}: '{text}' is not a number") from None
    if math.isnan(number) or math.isinf(number):
        raise ParameterError(f"{what}: '{text}' is not a finite number")
    if integer:
        if number != int(number):
            raise ParameterError(f"{what}: '{text}' is not a whole number")
        return int(number)
    return number


def unquote(args: Sequence[str]) -> List[str]:
    """The words of a value with one pair of surrounding quotes removed:
    ``"SINGLE"`` -> ``SINGLE``, ``'/a b'`` (two words) -> ``/a b``."""
    words = [str(a) for a in args]
    if words and words[0][:1] in ("'", '"'):
        quote = words[0][0]
        joined = " ".join(words)
        if len(joined) >= 2 and joined.endswith(quote):
            inner = joined[1:-1]
            return inner.split(" ") if inner else [""]
    return words


def one_arg(args: Sequence[str], what: str) -> str:
    """The value of a ``set``: all its words, joined."""
    if not args:
        raise ParameterError(f"{what} needs a value")
    return " ".join(str(a) for a in args).strip()


def flag_arg(args: Sequence[str], what: str) -> bool:
    """A yes/no ``set`` value."""
    return parse_bool(one_arg(args, what), what)
