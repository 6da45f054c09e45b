"""Suite files: read (safe YAML), apply command-line overrides, validate into typed specs.

Every error a user can cause is one sentence that names the key path and the fix, raised as
``UserInputError`` before anything runs or is written, e.g.
``engines[2].options.block_size: must be >= 1, got 0.``

Shape of a suite (defaults in brackets; see suites/long_context.yaml for a full example)::

    name: long_context            # [file stem] runs land in reports/<name>/<run-id>/
    description: ...
    models:                       # key -> checkpoint
      base: {path: tiny-base, dtype: float32, device: cpu, attn_implementation: sdpa,
             trust_remote_code: false, tokenizer: null}
    engines:                      # what is measured; each references a model by key
      - {engine: orthrus, label: orthrus, model: base, draft_model: null, options: {}}
    sweep:                        # lists expand to a matrix; scalars are one-element lists
      context_lengths: [512]      # synthetic prompts only
      block_sizes: [null]         # engines that take a block size; null = the model's own
      temperatures: [0.0]
      top_k: [0]
      top_p: [1.0]
      max_new_tokens: [64]
      batch_sizes: [1]
      exclude: []                 # mappings over the axes; a cell matching all keys is dropped
      include: []                 # mappings over the axes; cells added (unnamed axes expand)
    prompts:                      # one source or a list of sources (an axis of the matrix)
      - {source: synthetic, count: 2, corpus: heldout}
    measure: {repetitions: 3, warmup: 1, min_duration_s: 0, max_repetitions: 100, seed: 0,
              threads: 0, stop_at_eos: false, sample_interval_ms: 10}
    reference: {engine: ar, model: <the ar engine's model>}   # null: no identity check
    gates: []                     # list of mappings, evaluated by orthrus.report
    quick: {measure.repetitions: 1}   # overrides that --quick applies (dotted key paths)
    select: {engines: [ar, orthrus]}  # what --engines sets: only these labels are measured
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orthrus.errors import UserInputError

KNOWN_ENGINES = ("ar", "hf_generate", "orthrus", "assisted", "prompt_lookup", "dlm", "fast_dllm")
DRAFT_MODEL_ENGINES = ("assisted",)
DLM_ENGINES = ("dlm", "fast_dllm")
BLOCK_SIZE_ENGINES = ("orthrus",)  # plus any registered engine whose constructor takes block_size
# modules that register the engines written beside the core ones (imported on demand)
ENGINE_MODULES = {
    "dlm": "orthrus.engines.dlm",
    "fast_dllm": "orthrus.engines.dlm",
    "assisted": "orthrus.engines.speculative",
    "prompt_lookup": "orthrus.engines.speculative",
}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
PROMPT_SOURCES = ("synthetic", "jsonl", "inline")
AXES = (
    "engine",
    "prompt_source",
    "context_length",
    "block_size",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "batch_size",
)

TOP_KEYS = (
    "name",
    "description",
    "models",
    "engines",
    "sweep",
    "prompts",
    "measure",
    "reference",
    "gates",
    "quick",
    "select",
)
MODEL_KEYS = ("path", "dtype", "device", "attn_implementation", "trust_remote_code", "tokenizer")
ENGINE_KEYS = ("engine", "label", "model", "draft_model", "options")
# sweep key -> cell axis it feeds
SWEEP_AXES = {
    "context_lengths": "context_length",
    "block_sizes": "block_size",
    "temperatures": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "max_new_tokens": "max_new_tokens",
    "batch_sizes": "batch_size",
}
SWEEP_KEYS = (*SWEEP_AXES, "exclude", "include")
MEASURE_KEYS = (
    "repetitions",
    "warmup",
    "min_duration_s",
    "max_repetitions",
    "seed",
    "threads",
    "stop_at_eos",
    "sample_interval_ms",
)
REFERENCE_KEYS = ("engine", "model")
SELECT_KEYS = ("engines",)
PROMPT_KEYS = {
    "synthetic": ("source", "name", "count", "corpus"),
    "jsonl": (
        "source",
        "name",
        "path",
        "count",
        "per_category",
        "prompt_field",
        "turn",
        "id_field",
        "category_field",
        "categories",
        "chat_template",
        "system_prompt",
    ),
    "inline": ("source", "name", "prompts", "chat_template", "system_prompt"),
}
INLINE_PROMPT_KEYS = ("id", "text", "ids", "category")
# value rules for well-known engine options (whatever engine takes them)
OPTION_RULES: dict[str, tuple[str, float | None]] = {
    "block_size": ("int", 1),
    "steps": ("int", 1),
    "gen_length": ("int", 1),
    "block_length": ("int", 1),
    "num_assistant_tokens": ("int", 1),
    "prompt_lookup_num_tokens": ("int", 1),
    "max_matching_ngram_size": ("int", 1),
    "threshold": ("number", 0),
}
CORPUS_SPLITS = ("heldout", "train")


# --------------------------------------------------------------------------- typed suite
@dataclass
class ModelSpec:
    key: str
    path: str  # as written in the suite (a zoo name or a path): part of the cell's identity
    resolved: Path | None  # the directory; None for a zoo model that is not built yet
    dtype: str = "float32"
    device: str = "cpu"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    tokenizer: Path | None = None  # directory with tokenizer files (default: the model's)
    max_positions: int | None = None
    missing_reason: str | None = None  # set when resolved is None


@dataclass
class EngineSpec:
    index: int
    engine: str  # registry name
    label: str  # unique name in this suite (cells and reports use it)
    model: str
    draft_model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def takes_block_size(self) -> bool:
        return "block_size" not in self.options and engine_takes_block_size(self.engine)


@dataclass
class PromptSourceSpec:
    index: int
    source: str
    name: str
    count: int | None = None
    corpus: str = "heldout"  # synthetic: 'heldout', 'train' or a text file / directory
    path: Path | None = None  # jsonl
    per_category: int | None = None
    prompt_field: str | None = None
    turn: int = 0
    id_field: str | None = None
    category_field: str = "category"
    categories: list[str] | None = None
    chat_template: bool = False
    system_prompt: str | None = None
    prompts: list[dict[str, Any]] = field(default_factory=list)  # inline

    @property
    def uses_context_length(self) -> bool:
        return self.source == "synthetic"


@dataclass
class MeasureSpec:
    repetitions: int = 3
    warmup: int = 1
    min_duration_s: float = 0.0
    max_repetitions: int = 100
    seed: int = 0
    threads: int = 0
    stop_at_eos: bool = False
    sample_interval_ms: float = 10.0


@dataclass
class ReferenceSpec:
    engine: str  # registry name
    model: str  # model key


@dataclass
class Sweep:
    axes: dict[str, list[Any]]  # cell axis -> values (block_size may hold None)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Suite:
    name: str
    description: str
    models: dict[str, ModelSpec]
    engines: list[EngineSpec]
    sweep: Sweep
    prompts: list[PromptSourceSpec]
    measure: MeasureSpec
    reference: ReferenceSpec | None
    gates: list[Any]
    selected_engines: list[str] | None
    raw: dict[str, Any]  # the effective suite (after overrides), as written to the run's suite.yaml
    source_path: Path | None = None
    file_sha256: str | None = None

    @property
    def sha256(self) -> str:
        return suite_hash(self.raw)

    def engine(self, label: str) -> EngineSpec:
        return next(e for e in self.engines if e.label == label)


def suite_hash(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- reading
class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserInputError(f"{where}: invalid YAML{at} ({problem}); fix the file's syntax.") from err


def read_suite_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """The raw mapping of a suite file and the sha256 of its bytes."""
    file = Path(path)
    if not file.is_file():
        hint = " (a directory was given)" if file.is_dir() else ""
        raise UserInputError(f"suite file {str(path)!r} not found{hint}; give the path to a suite YAML file.")
    data = file.read_bytes()
    raw = parse_yaml(data.decode("utf-8", errors="replace"), str(path))
    if raw is None:
        raise UserInputError(f"{path}: the suite is empty; it needs at least 'models' and 'engines'.")
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: a suite must be a mapping of keys (models, engines, sweep, ...), not {_a(raw)}.")
    return raw, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- overrides
_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_key_path(path: str) -> list[str | int]:
    """'engines[2].options.block_size' or 'engines.2.options.block_size' -> ['engines', 2, 'options', 'block_size']."""
    parts: list[str | int] = []
    pos = 0
    for match in _PATH_TOKEN.finditer(path):
        if match.start() != pos and path[pos : match.start()] != ".":
            break
        name, index = match.groups()
        parts.append(int(index) if index is not None else (int(name) if name.isdigit() else name))
        pos = match.end()
    if not parts or pos != len(path):
        raise UserInputError(
            f"key path {path!r} is malformed; write it like sweep.context_lengths or engines[2].options.block_size."
        )
    return parts


def set_key_path(raw: dict[str, Any], path: str, value: Any, what: str = "--set") -> None:
    parts = split_key_path(path)
    node: Any = raw
    walked = ""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(node, list):
                raise UserInputError(
                    f"{what} {path}: {walked or 'the suite'} is not a list, so [{part}] cannot index it."
                )
            if part >= len(node):
                raise UserInputError(f"{what} {path}: {walked} has only {len(node)} entries (indices from 0).")
            if last:
                node[part] = value
            else:
                if node[part] is None:
                    node[part] = {}
                node = node[part]
            walked += f"[{part}]"
        else:
            if not isinstance(node, dict):
                raise UserInputError(f"{what} {path}: {walked or 'the suite'} is {_a(node)}, not a mapping.")
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            walked = f"{walked}.{part}" if walked else part


def apply_sets(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``--set key.path=value`` overrides (the value is read as YAML: [512,1024], true, 0.7, text)."""
    raw = copy.deepcopy(raw)
    for assignment in assignments:
        if "=" not in assignment:
            raise UserInputError(
                f"--set {assignment!r}: write it as key.path=value, e.g. --set sweep.context_lengths=[512,1024]."
            )
        path, text = assignment.split("=", 1)
        value = parse_yaml(text, f"--set {path}") if text.strip() else None
        set_key_path(raw, path.strip(), value)
    return raw


def apply_quick(raw: dict[str, Any]) -> dict[str, Any]:
    """The small slice --quick runs: one repetition, one prompt per source, then the suite's own ``quick``."""
    raw = copy.deepcopy(raw)
    measure = raw.get("measure")
    if measure is None or isinstance(measure, dict):
        measure = raw.setdefault("measure", {}) or {}
        raw["measure"] = measure
        measure.update(repetitions=1, min_duration_s=0)
    prompts = raw.get("prompts")
    for source in prompts if isinstance(prompts, list) else [prompts]:
        if isinstance(source, dict) and source.get("source") in ("synthetic", "jsonl"):
            source["count"] = 1
            source.pop("per_category", None)
    quick = raw.pop("quick", None)
    if quick is None:
        return raw
    if not isinstance(quick, dict):
        raise UserInputError(
            f"quick: must be a mapping of key paths to values (e.g. measure.repetitions: 1), not {_a(quick)}."
        )
    for path, value in quick.items():
        set_key_path(raw, str(path), copy.deepcopy(value), what="quick:")
    return raw


def apply_device(raw: dict[str, Any], device: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    models = raw.get("models")
    if isinstance(models, dict):
        for spec in models.values():
            if isinstance(spec, dict):
                spec["device"] = device
            # a bare path string becomes a mapping so the device can be set
        for key, spec in list(models.items()):
            if isinstance(spec, str):
                models[key] = {"path": spec, "device": device}
    return raw


def apply_engine_selection(raw: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    select = raw.get("select")
    if not isinstance(select, dict):
        select = {}
    select["engines"] = labels
    raw["select"] = select
    return raw


# --------------------------------------------------------------------------- validation helpers
def _kind(value: Any) -> str:
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


def _a(value: Any) -> str:
    kind = _kind(value)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _fail(path: str, message: str) -> UserInputError:
    return UserInputError(f"{path}: {message}")


def _join(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else str(key)


def suggestion(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """'; did you mean X?' for a near miss, else the list of choices."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    if match:
        return f"did you mean {match[0]!r}?"
    return f"expected one of {', '.join(map(str, choices))}."


def _check_keys(mapping: dict[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise _fail(_join(path, str(key)), f"unknown key; {suggestion(str(key), allowed)}")


def _mapping(value: Any, path: str, what: str = "a mapping") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, f"must be {what}, got {_a(value)} ({_show(value)}).")
    return value


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: Any, path: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _fail(path, f"must be an integer, got {_a(value)} ({_show(value)}).")
    if minimum is not None and value < minimum:
        raise _fail(path, f"must be >= {minimum}, got {value}.")
    return value


def _number(value: Any, path: str, minimum: float | None = None, exclusive: bool = False) -> float:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            pass
        else:  # YAML 1.1 reads 1e-3 as a string
            raise _fail(
                path, f"must be a number, got the string {value!r}; write it with a decimal point (e.g. 1.0e-3)."
            )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"must be a number, got {_a(value)} ({_show(value)}).")
    value = float(value)
    if minimum is not None and (value < minimum or exclusive and value == minimum):
        raise _fail(path, f"must be {'>' if exclusive else '>='} {minimum:g}, got {value:g}.")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"must be a non-empty string, got {_a(value)} ({_show(value)}).")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"must be true or false, got {_a(value)} ({_show(value)}).")
    return value


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    value = _str(value, path)
    if value not in choices:
        raise _fail(path, f"{value!r} is not supported; {suggestion(value, choices)}")
    return value


def _resolve_file(text: str, base_dir: Path | None) -> Path:
    """A path as written: absolute, relative to the working directory, or relative to the suite file."""
    path = Path(text).expanduser()
    if path.is_absolute() or path.exists() or base_dir is None:
        return path
    beside = base_dir / path
    return beside if beside.exists() else path


# --------------------------------------------------------------------------- engine registry
def engine_class(name: str) -> type | None:
    """The registered engine class, importing the module that registers it when needed (None if absent)."""
    from orthrus.engines import ENGINES

    if name not in ENGINES and name in ENGINE_MODULES:
        import importlib

        try:
            importlib.import_module(ENGINE_MODULES[name])
        except ImportError:
            return None
    return ENGINES.get(name)


def known_engines() -> tuple[str, ...]:
    from orthrus.engines import ENGINES

    return tuple(dict.fromkeys([*KNOWN_ENGINES, *sorted(ENGINES)]))


def _engine_parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named constructor options (beyond the model) and whether it takes **options too."""
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return {}, True
    named, var_kw = {}, False
    for i, (name, param) in enumerate(signature.parameters.items()):
        if i == 0 or name == "model":
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            named[name] = param
    return named, var_kw


def engine_takes_block_size(name: str) -> bool:
    if name in BLOCK_SIZE_ENGINES:
        return True
    cls = engine_class(name)
    return cls is not None and "block_size" in _engine_parameters(cls)[0]


def _check_option(name: str, value: Any, path: str, param: inspect.Parameter | None) -> None:
    rule = OPTION_RULES.get(name)
    if rule is not None and value is not None:
        kind, minimum = rule
        if kind == "int":
            _int(value, path, int(minimum) if minimum is not None else None)
        else:
            _number(value, path, minimum, exclusive=True)
        return
    if param is None or param.default is inspect.Parameter.empty or param.default is None or value is None:
        return
    default = param.default
    if isinstance(default, bool):
        _bool(value, path)
    elif isinstance(default, int):
        _int(value, path)
    elif isinstance(default, float):
        _number(value, path)
    elif isinstance(default, str):
        _str(value, path)


# --------------------------------------------------------------------------- validation
def validate_suite(raw: dict[str, Any], source_path: Path | None = None, file_sha256: str | None = None) -> Suite:
    """Check every key and value of a suite mapping; return the typed suite with defaults filled."""
    base_dir = source_path.resolve().parent if source_path is not None else None
    raw = copy.deepcopy(raw)
    _check_keys(raw, TOP_KEYS, "")
    name = raw.get("name")
    if name is None:
        name = source_path.stem if source_path is not None else "suite"
    name = _str(name, "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise _fail("name", f"{name!r} must be letters, digits, '_', '-' or '.' (it names the reports/<name>/ folder).")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise _fail("description", f"must be a string, got {_a(description)}.")

    models = _validate_models(raw.get("models"), base_dir)
    engines = _validate_engines(raw.get("engines"), models)
    prompts = _validate_prompts(raw.get("prompts"), base_dir)
    measure = _validate_measure(raw.get("measure"))
    labels = [e.label for e in engines]
    engine_names = list(dict.fromkeys(labels + [e.engine for e in engines]))
    sweep = _validate_sweep(raw.get("sweep"), engine_names, [p.name for p in prompts])
    reference = _validate_reference(raw.get("reference", "default"), engines, models)
    gates = raw.get("gates")
    if gates is None:
        gates = []
    if not isinstance(gates, list):
        raise _fail("gates", f"must be a list of gate rules (mappings), got {_a(gates)}.")
    for i, gate in enumerate(gates):
        _mapping(gate, f"gates[{i}]")
    if gates:  # the rule grammar is orthrus.report's: a bad rule fails here, before anything runs
        from orthrus.report.gates import parse_rules

        parse_rules(gates, "gates")
    if "quick" in raw and raw["quick"] is not None:
        quick = _mapping(raw["quick"], "quick", "a mapping of key paths to values (e.g. measure.repetitions: 1)")
        for key in quick:
            split_key_path(str(key))
    selected = None
    if raw.get("select") is not None:
        select = _mapping(raw["select"], "select")
        _check_keys(select, SELECT_KEYS, "select")
        chosen = select.get("engines")
        if chosen is not None:
            if isinstance(chosen, str):
                chosen = [chosen]
            if not isinstance(chosen, list) or not chosen:
                raise _fail("select.engines", "must be a non-empty list of engine labels.")
            for i, label in enumerate(chosen):
                if label not in labels:
                    raise _fail(
                        f"select.engines[{i}]", f"no engine is labelled {label!r}; {suggestion(str(label), labels)}"
                    )
            selected = list(dict.fromkeys(chosen))

    suite = Suite(
        name=name,
        description=description,
        models=models,
        engines=engines,
        sweep=sweep,
        prompts=prompts,
        measure=measure,
        reference=reference,
        gates=gates,
        selected_engines=selected,
        raw=raw,
        source_path=source_path,
        file_sha256=file_sha256,
    )
    from orthrus.bench.matrix import expand

    cells = expand(suite)  # also checks context lengths against each model's maximum
    if not cells:
        raise _fail("sweep", "the matrix is empty after exclude/include and select; keep at least one combination.")
    return suite


def _validate_models(value: Any, base_dir: Path | None) -> dict[str, ModelSpec]:
    if value is None:
        raise _fail("models", "missing; name at least one model, e.g. models: {base: {path: tiny-base}}.")
    models = _mapping(value, "models", "a mapping of model keys to checkpoints")
    if not models:
        raise _fail("models", "is empty; name at least one model, e.g. models: {base: {path: tiny-base}}.")
    specs = {}
    for key, spec in models.items():
        path = _join("models", str(key))
        if isinstance(spec, str):
            spec = {"path": spec}
        spec = _mapping(spec, path, "a mapping with at least 'path' (or just the path)")
        _check_keys(spec, MODEL_KEYS, path)
        if "path" not in spec:
            raise _fail(f"{path}.path", "missing; give a zoo name (e.g. tiny-base) or a checkpoint directory.")
        model_path = _str(spec["path"], f"{path}.path")
        dtype = _choice(spec.get("dtype", "float32"), f"{path}.dtype", DTYPE_NAMES)
        device = _validate_device(spec.get("device", "cpu"), f"{path}.device")
        attn = _choice(spec.get("attn_implementation", "sdpa"), f"{path}.attn_implementation", ATTN_IMPLEMENTATIONS)
        trust = _bool(spec.get("trust_remote_code", False), f"{path}.trust_remote_code")
        resolved, missing, max_positions = _resolve_model(model_path, f"{path}.path", base_dir)
        tokenizer = None
        if spec.get("tokenizer") is not None:
            tokenizer = _resolve_tokenizer(_str(spec["tokenizer"], f"{path}.tokenizer"), f"{path}.tokenizer", base_dir)
        specs[str(key)] = ModelSpec(
            key=str(key),
            path=model_path,
            resolved=resolved,
            dtype=dtype,
            device=device,
            attn_implementation=attn,
            trust_remote_code=trust,
            tokenizer=tokenizer,
            max_positions=max_positions,
            missing_reason=missing,
        )
    return specs


def _validate_device(value: Any, path: str) -> str:
    device = _str(value, path)
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise _fail(path, f"{device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'.")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise _fail(
                path, f"{device!r} was asked for but this machine has no CUDA GPU; use 'cpu' (or --device cpu)."
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise _fail(
                path, f"{device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise _fail(path, "'mps' was asked for but is not available here; use 'cpu'.")
    return device


def _resolve_model(text: str, path: str, base_dir: Path | None) -> tuple[Path | None, str | None, int | None]:
    """(directory, why it is missing, max_position_embeddings); a known but unbuilt zoo model is not an error here."""
    from orthrus.models.zoo_index import ZOO_NAMES, zoo_path

    candidate = _resolve_file(text, base_dir)
    if candidate.is_dir():
        directory = candidate
    elif text in ZOO_NAMES:
        directory = zoo_path(text)
        if directory is None:
            step = text.removeprefix("tiny-")
            return None, f"zoo model {text!r} is not built yet; build it with `python -m orthrus train {step}`", None
    else:
        raise _fail(
            path,
            f"{text!r} is neither a checkpoint directory nor a zoo model; give a directory holding config.json "
            f"or one of {', '.join(ZOO_NAMES)}.",
        )
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise _fail(path, f"{str(directory)!r} has no config.json; point it at a Hugging Face checkpoint directory.")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise _fail(path, f"{config_file} is not valid JSON ({err.msg}); fix or re-download the file.") from err
    weights = list(directory.glob("*.safetensors")) + list(directory.glob("*.bin"))
    if not weights:
        raise _fail(path, f"{str(directory)!r} has no weights (*.safetensors); point it at a complete checkpoint.")
    max_positions = config.get("max_position_embeddings")
    return directory, None, int(max_positions) if isinstance(max_positions, int) else None


def _resolve_tokenizer(text: str, path: str, base_dir: Path | None) -> Path:
    from orthrus.models.zoo_index import ZOO_DIR

    candidate = _resolve_file(text, base_dir)
    if not candidate.is_dir() and (ZOO_DIR / text).is_dir():
        candidate = ZOO_DIR / text
    if not candidate.is_dir() or not has_tokenizer_files(candidate):
        raise _fail(
            path, f"{text!r} is not a directory with tokenizer files (tokenizer.json or tokenizer_config.json)."
        )
    return candidate


def has_tokenizer_files(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()


def _validate_engines(value: Any, models: dict[str, ModelSpec]) -> list[EngineSpec]:
    if value is None:
        raise _fail("engines", "missing; list the engines to measure, e.g. engines: [{engine: ar, model: base}].")
    if not isinstance(value, list) or not value:
        raise _fail("engines", f"must be a non-empty list of engines, got {_a(value)}.")
    known = known_engines()
    model_keys = list(models)
    specs: list[EngineSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(value):
        path = f"engines[{i}]"
        if isinstance(entry, str):
            entry = {"engine": entry}
        entry = _mapping(entry, path)
        _check_keys(entry, ENGINE_KEYS, path)
        if "engine" not in entry:
            raise _fail(f"{path}.engine", f"missing; name the decoding method, one of {', '.join(known)}.")
        name = _str(entry["engine"], f"{path}.engine")
        if name not in known:
            raise _fail(f"{path}.engine", f"unknown engine {name!r}; {suggestion(name, known)}")
        label = _str(entry.get("label", name), f"{path}.label")
        if label in seen:
            raise _fail(
                f"{path}.label",
                f"{label!r} is already used by engines[{seen[label]}]; give each engine a distinct label.",
            )
        seen[label] = i
        model = entry.get("model")
        if model is None:
            if len(models) != 1:
                raise _fail(f"{path}.model", f"missing; name one of the models: {', '.join(model_keys)}.")
            model = model_keys[0]
        model = _str(model, f"{path}.model")
        if model not in models:
            raise _fail(f"{path}.model", f"no model has the key {model!r}; {suggestion(model, model_keys)}")
        draft = entry.get("draft_model")
        if name in DRAFT_MODEL_ENGINES and draft is None:
            raise _fail(
                f"{path}.draft_model",
                f"missing; engine {name!r} needs a draft model, e.g. draft_model: draft with models: {{draft: {{path: tiny-draft}}}}.",
            )
        if draft is not None:
            if name not in DRAFT_MODEL_ENGINES:
                raise _fail(
                    f"{path}.draft_model",
                    f"engine {name!r} takes no draft model (only {', '.join(DRAFT_MODEL_ENGINES)} does).",
                )
            draft = _str(draft, f"{path}.draft_model")
            if draft not in models:
                raise _fail(f"{path}.draft_model", f"no model has the key {draft!r}; {suggestion(draft, model_keys)}")
        options = entry.get("options") or {}
        options = _mapping(options, f"{path}.options")
        _validate_engine_options(name, options, f"{path}.options")
        specs.append(
            EngineSpec(index=i, engine=name, label=label, model=model, draft_model=draft, options=dict(options))
        )
    return specs


def _validate_engine_options(name: str, options: dict[str, Any], path: str) -> None:
    cls = engine_class(name)
    named: dict[str, inspect.Parameter] = {}
    var_kw = True
    if cls is not None:
        named, var_kw = _engine_parameters(cls)
    for key, value in options.items():
        key_path = _join(path, str(key))
        if not isinstance(key, str):
            raise _fail(key_path, "option names must be strings.")
        if key in ("draft_model", "assistant_model"):
            raise _fail(key_path, "name the draft model with the engine's draft_model key, not in options.")
        if cls is not None and key not in named:
            close = difflib.get_close_matches(key, list(named), n=1, cutoff=0.6)
            if close or not var_kw:
                hint = f"did you mean {close[0]!r}?" if close else f"it takes {', '.join(named) or 'no options'}."
                raise _fail(key_path, f"engine {name!r} takes no option {key!r}; {hint}")
        _check_option(key, value, key_path, named.get(key))


def _as_list(value: Any, path: str) -> list[Any]:
    if isinstance(value, list):
        if not value:
            raise _fail(path, "is an empty list; give at least one value.")
        return value
    return [value]


def _validate_sweep(value: Any, labels: list[str], sources: list[str]) -> Sweep:
    sweep = _mapping(value if value is not None else {}, "sweep")
    _check_keys(sweep, SWEEP_KEYS, "sweep")
    defaults: dict[str, Any] = {
        "context_lengths": [512],
        "block_sizes": [None],
        "temperatures": [0.0],
        "top_k": [0],
        "top_p": [1.0],
        "max_new_tokens": [64],
        "batch_sizes": [1],
    }
    axes: dict[str, list[Any]] = {}
    for key, axis in SWEEP_AXES.items():
        values = _as_list(sweep.get(key, defaults[key]), f"sweep.{key}")
        checked = []
        for j, item in enumerate(values):
            checked.append(
                _axis_value(axis, item, f"sweep.{key}[{j}]" if isinstance(sweep.get(key), list) else f"sweep.{key}")
            )
        for j, item in enumerate(checked):
            if item in checked[:j]:
                raise _fail(f"sweep.{key}", f"{item} is listed twice; list each value once.")
        axes[axis] = checked
    result = Sweep(axes=axes)
    valid = {**axes, "engine": labels, "prompt_source": sources}
    for kind in ("exclude", "include"):
        entries = sweep.get(kind) or []
        if not isinstance(entries, list):
            raise _fail(f"sweep.{kind}", f"must be a list of mappings over {', '.join(AXES)}.")
        for i, entry in enumerate(entries):
            path = f"sweep.{kind}[{i}]"
            entry = _mapping(entry, path, f"a mapping over {', '.join(AXES)}")
            if not entry:
                raise _fail(path, "is empty; name at least one axis (e.g. engine: dlm).")
            _check_keys(entry, AXES, path)
            checked_entry = {}
            for axis, item in entry.items():
                item_path = f"{path}.{axis}"
                if axis in ("engine", "prompt_source"):
                    item = _str(item, item_path)
                    choices = valid[axis]
                    if item not in choices:
                        what = "engine (label or name)" if axis == "engine" else "prompt source name"
                        raise _fail(item_path, f"no {what} {item!r} in this suite; {suggestion(item, choices)}")
                else:
                    item = _axis_value(axis, item, item_path)
                    if kind == "exclude" and item not in valid[axis]:
                        key = next(k for k, a in SWEEP_AXES.items() if a == axis)
                        raise _fail(item_path, f"{item} is not in sweep.{key} {valid[axis]}, so it excludes nothing.")
                checked_entry[axis] = item
            getattr(result, kind).append(checked_entry)
    return result


def _axis_value(axis: str, value: Any, path: str) -> Any:
    if axis == "context_length":
        return _int(value, path, 1)
    if axis == "block_size":
        return None if value is None else _int(value, path, 1)
    if axis == "temperature":
        return _number(value, path, 0.0)
    if axis == "top_k":
        return _int(value, path, 0)
    if axis == "top_p":
        top_p = _number(value, path, 0.0, exclusive=True)
        if top_p > 1.0:
            raise _fail(path, f"must be in (0, 1], got {top_p:g}.")
        return top_p
    if axis == "max_new_tokens":
        return _int(value, path, 1)
    if axis == "batch_size":
        return _int(value, path, 1)
    raise AssertionError(axis)


def _validate_prompts(value: Any, base_dir: Path | None) -> list[PromptSourceSpec]:
    if value is None:
        value = [{"source": "synthetic"}]
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise _fail("prompts", "is an empty list; give at least one prompt source (synthetic, jsonl or inline).")
    specs: list[PromptSourceSpec] = []
    names: dict[str, int] = {}
    for i, entry in enumerate(entries):
        path = f"prompts[{i}]" if isinstance(value, list) else "prompts"
        entry = _mapping(entry, path, "a prompt source mapping (source: synthetic | jsonl | inline)")
        if "source" not in entry:
            raise _fail(f"{path}.source", f"missing; choose one of {', '.join(PROMPT_SOURCES)}.")
        source = _choice(entry["source"], f"{path}.source", PROMPT_SOURCES)
        _check_keys(entry, PROMPT_KEYS[source], path)
        spec = PromptSourceSpec(index=i, source=source, name="")
        if source == "synthetic":
            spec.count = _int(entry.get("count", 2), f"{path}.count", 1)
            corpus = _str(entry.get("corpus", "heldout"), f"{path}.corpus")
            if corpus not in CORPUS_SPLITS:
                resolved = _resolve_file(corpus, base_dir)
                if not resolved.exists():
                    raise _fail(
                        f"{path}.corpus",
                        f"{corpus!r} is neither {' nor '.join(CORPUS_SPLITS)} nor an existing text file or directory.",
                    )
                corpus = str(resolved)
            spec.corpus = corpus
            default_name = "synthetic" if corpus == "heldout" else f"synthetic-{Path(corpus).stem}"
        elif source == "jsonl":
            if "path" not in entry:
                raise _fail(f"{path}.path", "missing; give the path of a JSONL file (one JSON object per line).")
            file = _resolve_file(_str(entry["path"], f"{path}.path"), base_dir)
            if not file.is_file():
                raise _fail(f"{path}.path", f"{entry['path']!r} not found; give the path of an existing JSONL file.")
            spec.path = file
            if entry.get("count") is not None:
                spec.count = _int(entry["count"], f"{path}.count", 1)
            if entry.get("per_category") is not None:
                spec.per_category = _int(entry["per_category"], f"{path}.per_category", 1)
            for key in ("prompt_field", "id_field"):
                if entry.get(key) is not None:
                    setattr(spec, key, _str(entry[key], f"{path}.{key}"))
            spec.category_field = _str(entry.get("category_field", "category"), f"{path}.category_field")
            spec.turn = _int(entry.get("turn", 0), f"{path}.turn", 0)
            if entry.get("categories") is not None:
                categories = _as_list(entry["categories"], f"{path}.categories")
                spec.categories = [_str(c, f"{path}.categories[{j}]") for j, c in enumerate(categories)]
            _check_jsonl(spec, path)
            default_name = file.stem
        else:
            prompts = entry.get("prompts")
            if not isinstance(prompts, list) or not prompts:
                raise _fail(f"{path}.prompts", "must be a non-empty list of prompt texts or mappings with text or ids.")
            spec.prompts = [_inline_prompt(p, f"{path}.prompts[{j}]", j) for j, p in enumerate(prompts)]
            ids = [p["id"] for p in spec.prompts]
            for j, pid in enumerate(ids):
                if pid in ids[:j]:
                    raise _fail(f"{path}.prompts[{j}].id", f"{pid!r} is used twice; give each prompt a distinct id.")
            default_name = "inline"
        if source != "synthetic":
            spec.chat_template = _bool(entry.get("chat_template", False), f"{path}.chat_template")
            if entry.get("system_prompt") is not None:
                spec.system_prompt = _str(entry["system_prompt"], f"{path}.system_prompt")
        spec.name = _str(entry.get("name", default_name), f"{path}.name")
        if spec.name in names:
            raise _fail(
                f"{path}.name",
                f"{spec.name!r} is already used by prompts[{names[spec.name]}]; give each source a distinct name.",
            )
        names[spec.name] = i
        specs.append(spec)
    return specs


def _inline_prompt(value: Any, path: str, index: int) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"text": value}
    value = _mapping(value, path, "a prompt text or a mapping with text or ids")
    _check_keys(value, INLINE_PROMPT_KEYS, path)
    has_text, has_ids = value.get("text") is not None, value.get("ids") is not None
    if has_text == has_ids:
        raise _fail(path, "give exactly one of text (a string) or ids (a list of token ids).")
    prompt: dict[str, Any] = {"id": str(value.get("id", index)), "category": value.get("category")}
    if has_text:
        prompt["text"] = _str(value["text"], f"{path}.text")
    else:
        ids = value["ids"]
        if not isinstance(ids, list) or not ids:
            raise _fail(f"{path}.ids", "must be a non-empty list of token ids.")
        prompt["ids"] = [_int(t, f"{path}.ids[{k}]", 0) for k, t in enumerate(ids)]
    if prompt["category"] is not None:
        prompt["category"] = _str(prompt["category"], f"{path}.category")
    return prompt


def _check_jsonl(spec: PromptSourceSpec, path: str) -> None:
    """Every line parses, and the prompt field is there (so a run cannot fail on its data halfway)."""
    assert spec.path is not None
    count = 0
    with spec.path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise _fail(f"{path}.path", f"{spec.path} line {number} is not valid JSON ({err.msg}).") from err
            if not isinstance(record, dict):
                raise _fail(f"{path}.path", f"{spec.path} line {number} is not a JSON object.")
            from orthrus.bench.prompts import jsonl_prompt_text

            try:
                jsonl_prompt_text(record, spec)
            except UserInputError as err:
                raise _fail(f"{path}.path", f"{spec.path} line {number}: {err}") from err
            count += 1
    if count == 0:
        raise _fail(f"{path}.path", f"{spec.path} holds no records.")


def _validate_measure(value: Any) -> MeasureSpec:
    measure = _mapping(value if value is not None else {}, "measure")
    _check_keys(measure, MEASURE_KEYS, "measure")
    spec = MeasureSpec()
    spec.repetitions = _int(measure.get("repetitions", spec.repetitions), "measure.repetitions", 1)
    spec.warmup = _int(measure.get("warmup", spec.warmup), "measure.warmup", 0)
    spec.min_duration_s = _number(measure.get("min_duration_s", 0.0), "measure.min_duration_s", 0.0)
    spec.max_repetitions = _int(
        measure.get("max_repetitions", max(100, spec.repetitions)), "measure.max_repetitions", 1
    )
    if spec.max_repetitions < spec.repetitions:
        raise _fail(
            "measure.max_repetitions",
            f"must be >= measure.repetitions ({spec.repetitions}), got {spec.max_repetitions}.",
        )
    spec.seed = _int(measure.get("seed", 0), "measure.seed", 0)
    spec.threads = _int(measure.get("threads", 0), "measure.threads", 0)
    spec.stop_at_eos = _bool(measure.get("stop_at_eos", False), "measure.stop_at_eos")
    spec.sample_interval_ms = _number(
        measure.get("sample_interval_ms", 10.0), "measure.sample_interval_ms", 0.0, exclusive=True
    )
    return spec


def _validate_reference(value: Any, engines: list[EngineSpec], models: dict[str, ModelSpec]) -> ReferenceSpec | None:
    if value is None or value is False:
        return None
    if value == "default":
        value = {}
    reference = _mapping(value, "reference", "a mapping (engine, model) or null for no identity check")
    _check_keys(reference, REFERENCE_KEYS, "reference")
    name = reference.get("engine", "ar")
    name = _str(name, "reference.engine")
    labels = {e.label: e for e in engines}
    if name in labels:  # a label of this suite: its engine and model
        entry = labels[name]
        name, default_model = entry.engine, entry.model
    else:
        known = known_engines()
        if name not in known:
            raise _fail("reference.engine", f"unknown engine {name!r}; {suggestion(name, known)}")
        same = [e for e in engines if e.engine == name]
        ar_models = [m for m in models if not any(e.model == m and e.engine in DLM_ENGINES for e in engines)]
        default_model = same[0].model if same else (ar_models or list(models))[0]
    if name in DLM_ENGINES or name in DRAFT_MODEL_ENGINES:
        raise _fail("reference.engine", f"{name!r} cannot be the identity reference; use an AR engine such as 'ar'.")
    model = _str(reference.get("model", default_model), "reference.model")
    if model not in models:
        raise _fail("reference.model", f"no model has the key {model!r}; {suggestion(model, list(models))}")
    return ReferenceSpec(engine=name, model=model)


def load_suite(
    path: str | Path | None,
    sets: list[str] | None = None,
    quick: bool = False,
    device: str | None = None,
    engines: list[str] | None = None,
    raw: dict[str, Any] | None = None,
) -> Suite:
    """Read a suite file (or take ``raw``), apply the command line's changes, validate."""
    file_sha = None
    if raw is None:
        assert path is not None
        raw, file_sha = read_suite_file(path)
    if quick:
        raw = apply_quick(raw)
    if sets:
        raw = apply_sets(raw, sets)
    if device is not None:
        _validate_device(device, "--device")
        raw = apply_device(raw, device)
    if engines:
        raw = apply_engine_selection(raw, engines)
    return validate_suite(raw, Path(path) if path is not None else None, file_sha)
