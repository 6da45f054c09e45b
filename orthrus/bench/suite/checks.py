"""Value checks: each returns the value (converted where YAML is loose) or raises one sentence
that names the key path, e.g. ``engines[2].options.block_size: must be >= 1, got 0.``"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def a_kind(value: Any) -> str:
    """'a string', 'an integer', ... for messages."""
    kind = kind_of(value)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def fail(path: str, message: str) -> UserInputError:
    return UserInputError(f"{path}: {message}")


def join(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else str(key)


def close_match(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def suggestion(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """'did you mean X?' for a near miss, else the list of choices."""
    match = close_match(word, choices)
    if match is not None:
        return f"did you mean {match!r}?"
    return f"expected one of {', '.join(map(str, choices))}."


def check_keys(mapping: dict[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise fail(join(path, str(key)), f"unknown key; {suggestion(str(key), allowed)}")


def show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def as_mapping(value: Any, path: str, what: str = "a mapping") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(path, f"must be {what}, got {a_kind(value)} ({show(value)}).")
    return value


def as_list(value: Any, path: str) -> list[Any]:
    """A scalar is a one-element list; an empty list is refused."""
    if isinstance(value, list):
        if not value:
            raise fail(path, "is an empty list; give at least one value.")
        return value
    return [value]


def as_int(value: Any, path: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise fail(path, f"must be an integer, got {value}; NaN and infinity are refused.")
        else:
            raise fail(path, f"must be an integer, got {a_kind(value)} ({show(value)}).")
    if minimum is not None and value < minimum:
        raise fail(path, f"must be >= {minimum}, got {show(value)}.")
    maximum = MAX_INT if maximum is None else maximum
    if value > maximum:
        raise fail(path, f"must be <= {maximum}, got {show(value)}.")
    return value


MAX_INT = 2**63 - 1  # beyond it no counter, seed or length is meant (and torch cannot hold it)


def check_finite(value: Any, path: str) -> None:
    """No NaN or infinity anywhere inside ``value`` (for values whose type is the engine's business)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(path, f"must be a finite number, got {value}; NaN and infinity are refused.")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, join(path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite(item, join(path, index))


def as_number(value: Any, path: str, minimum: float | None = None, exclusive: bool = False) -> float:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
        else:  # YAML 1.1 reads 1e-3 as a string
            if not math.isfinite(number):
                raise fail(path, f"must be a finite number, got the string {value!r}.")
            raise fail(
                path, f"must be a number, got the string {value!r}; write it with a decimal point (e.g. 1.0e-3)."
            )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(path, f"must be a number, got {a_kind(value)} ({show(value)}).")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        raise fail(path, f"must be a finite number, got {show(value)}.") from None
    if not math.isfinite(value):
        raise fail(path, f"must be a finite number, got {value}; NaN and infinity are refused.")
    if minimum is not None and (value < minimum or exclusive and value == minimum):
        raise fail(path, f"must be {'>' if exclusive else '>='} {minimum:g}, got {value:g}.")
    return value


def as_str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(path, f"must be a non-empty string, got {a_kind(value)} ({show(value)}).")
    return value


def as_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise fail(path, f"must be true or false, got {a_kind(value)} ({show(value)}).")
    return value


def as_choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    value = as_str(value, path)
    if value not in choices:
        raise fail(path, f"{value!r} is not supported; {suggestion(value, choices)}")
    return value


def as_device(value: Any, path: str) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'mps', and present on this machine."""
    device = as_str(value, path)
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise fail(path, f"{device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'.")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise fail(path, f"{device!r} was asked for but this machine has no CUDA GPU; use 'cpu' (or --device cpu).")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise fail(path, f"{device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s).")
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise fail(path, "'mps' was asked for but is not available here; use 'cpu'.")
    return device


def resolve_file(text: str, base_dir: Path | None) -> Path:
    """A path as written: absolute, relative to the working directory, or relative to the suite file."""
    path = Path(text).expanduser()
    if path.is_absolute() or path.exists() or base_dir is None:
        return path
    beside = base_dir / path
    return beside if beside.exists() else path
