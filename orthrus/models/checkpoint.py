"""Reading a checkpoint directory's files before anything loads them: JSON objects, the custom code a
checkpoint declares, and safetensors headers. Each problem is one sentence naming the file.

Custom code: a Hugging Face checkpoint or tokenizer can ship Python modules and name them in the
``auto_map`` of its ``config.json`` or ``tokenizer_config.json`` (e.g. ``"AutoModel":
"modeling_x.XModel"``, or ``"repo--modeling_x.XModel"`` for code in another repository);
transformers imports them when asked to load it with ``trust_remote_code=True``, and, when no value
is given, asks on standard input. We read ``auto_map`` ourselves first and refuse, with our own
sentence, unless the caller allowed custom code for this checkpoint; every transformers load in
this package also passes an explicit ``trust_remote_code``, so its prompt is never reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError

# the files whose auto_map makes transformers import a checkpoint's own code
CODE_DECLARING_FILES = ("config.json", "tokenizer_config.json")
REMOTE_CODE_FIX = (
    "allow it for this model only if you trust its code: models.<key>.trust_remote_code: true in the suite, "
    "or --trust-remote-code on python -m orthrus generate"
)


def read_json_object(file: Path) -> dict[str, Any]:
    """The JSON object in ``file``; not UTF-8, not JSON, or another JSON value is one sentence naming it."""
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(f"{file} is not UTF-8 text (byte {err.start}); fix or re-download the file.") from err
    except OSError as err:
        raise UserInputError(f"{file} cannot be read ({err.strerror or err}); check the file.") from err
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(
            f"{file} is not valid JSON ({err.msg} at line {err.lineno}); fix or re-download the file."
        ) from err
    except RecursionError as err:
        raise UserInputError(f"{file} is nested too deeply to be a checkpoint file; fix or re-download it.") from err
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
        raise UserInputError(
            f"{file} holds {kind.get(type(value), 'null')}, not a JSON object; fix or re-download the file."
        )
    return value


def declared_code(directory: Path) -> dict[str, list[str]]:
    """Per file of ``directory`` that declares custom code (``auto_map``), the code it names
    (``module.py``, or ``repo:module.py`` for code in another repository); empty when there is none."""
    found: dict[str, list[str]] = {}
    for name in CODE_DECLARING_FILES:
        file = directory / name
        if not file.is_file():
            continue
        auto_map = read_json_object(file).get("auto_map")
        if auto_map:
            found[name] = sorted(set(_code_files(auto_map))) or ["unnamed code"]
    return found


def _code_files(auto_map: Any) -> list[str]:
    refs: list[str] = []
    values = auto_map.values() if isinstance(auto_map, dict) else auto_map if isinstance(auto_map, list) else []
    for value in values:
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and "." in ref:
                repo, _, local = ref.rpartition("--")
                module = local.rpartition(".")[0].replace(".", "/") + ".py"
                refs.append(f"{repo}:{module}" if repo else module)
    return refs


def check_remote_code(
    directory: Path, trust_remote_code: bool, name: str | None = None, fix: str = REMOTE_CODE_FIX
) -> None:
    """Refuse ``directory`` (a checkpoint or tokenizer) when it declares custom code that was not allowed.

    ``name`` says where the directory came from (``models.draft``, ``--model X``); ``fix`` how to allow it."""
    if trust_remote_code:
        return
    declared = declared_code(directory)
    if declared:
        what = "; ".join(f"{', '.join(code)} named by auto_map in {file}" for file, code in declared.items())
        where = name if name and str(directory) in name else f"{name} ({directory})" if name else str(directory)
        raise UserInputError(f"{where} ships its own code ({what}), which is never run unless allowed; {fix}.")


def check_safetensors(file: Path) -> None:
    """The header of a safetensors file parses and the file holds all the data it announces (it is not
    truncated); reads the header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise UserInputError(
            f"{file} is not a complete safetensors file ({_first_line(err)}); re-download or re-save the checkpoint."
        ) from err


def load_tokenizer(
    directory: Path, trust_remote_code: bool, name: str = "the tokenizer", fix: str = REMOTE_CODE_FIX
) -> Any:
    """``AutoTokenizer`` for a local directory, with an explicit ``trust_remote_code``: a tokenizer that
    ships its own code is refused (our sentence, see check_remote_code) unless it is allowed, and a
    load that fails is one sentence naming the directory (or the malformed tokenizer.json)."""
    from transformers import AutoTokenizer

    check_remote_code(directory, trust_remote_code, name, fix)
    try:
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - any loader failure is the user's files
        if (directory / "tokenizer.json").is_file():
            read_tokenizer_file(directory / "tokenizer.json")  # names the file when it is the malformed one
        raise UserInputError(
            f"the tokenizer in {directory} could not be loaded ({type(err).__name__}: {_first_line(err)}); "
            "check its tokenizer files."
        ) from err


def read_tokenizer_file(file: Path) -> Any:
    """The ``tokenizers.Tokenizer`` in a ``tokenizer.json``; a malformed file is one sentence naming it."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise UserInputError(
            f"{file} is not a valid tokenizer file ({_first_line(err)}); fix or re-download it."
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
