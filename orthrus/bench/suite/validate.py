"""``load_suite``: read a suite (or take a mapping), apply the command line's changes, check every
key and value, and expand the matrix once. Every error a user can cause is one sentence naming the
key path, raised as ``UserInputError`` before anything runs or is written."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from orthrus.bench.matrix import expand
from orthrus.bench.suite.checks import (
    a_kind,
    as_bool,
    as_choice,
    as_device,
    as_int,
    as_list,
    as_mapping,
    as_number,
    as_str,
    check_keys,
    fail,
    suggestion,
)
from orthrus.bench.suite.engine_checks import check_engine_settings
from orthrus.bench.suite.engines import validate_engines, validate_reference
from orthrus.bench.suite.load import read_suite_file
from orthrus.bench.suite.models import validate_models
from orthrus.bench.suite.overrides import (
    apply_device,
    apply_engine_selection,
    apply_quick,
    apply_sets,
    drop_narrowed_excludes,
    split_key_path,
)
from orthrus.bench.suite.prompt_sources import validate_prompts
from orthrus.bench.suite.spec import (
    AXES,
    MEASURE_KEYS,
    MEASURE_ORDERS,
    ROUND_ORDERS,
    SELECT_KEYS,
    SWEEP_AXES,
    SWEEP_DEFAULTS,
    SWEEP_KEYS,
    TOP_KEYS,
    MeasureSpec,
    Suite,
    Sweep,
)
from orthrus.errors import UserInputError
from orthrus.results.vocabulary import AXIS


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
    written = raw
    if quick:
        raw = apply_quick(raw)
    if sets:
        raw = apply_sets(raw, sets)
    if quick or sets:
        raw = drop_narrowed_excludes(written, raw)
    if device is not None:
        as_device(device, "--device")
        raw = apply_device(raw, device)
    if engines:
        _check_selection(raw, engines)
        raw = apply_engine_selection(raw, engines)
    return validate_suite(raw, Path(path) if path is not None else None, file_sha)


def _check_selection(raw: dict[str, Any], engines: list[str]) -> None:
    """``--engines`` names labels of the suite's engines (said in the flag's own words; a malformed
    engines: list is left to the validation)."""
    entries = raw.get("engines")
    if not isinstance(entries, list):
        return
    labels = []
    for entry in entries:
        entry = {"engine": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("label", entry.get("engine")), str):
            return
        labels.append(entry.get("label", entry.get("engine")))
    for label in engines:
        if label not in labels:
            raise UserInputError(
                f"--engines {label}: no engine of this suite is labelled so; {suggestion(label, labels)}"
            )


def validate_suite(raw: dict[str, Any], source_path: Path | None = None, file_sha256: str | None = None) -> Suite:
    """Check every key and value of a suite mapping; return the typed suite with defaults filled and
    its cells expanded (``Suite.cells``). Gate rules are checked for shape only: their grammar is the
    report's, checked by the caller that runs the gates."""
    base_dir = source_path.resolve().parent if source_path is not None else None
    raw = copy.deepcopy(raw)
    check_keys(raw, TOP_KEYS, "")
    name = raw.get("name")
    if name is None:
        name = source_path.stem if source_path is not None else "suite"
    name = as_str(name, "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise fail("name", f"{name!r} must be letters, digits, '_', '-' or '.' (it names the reports/<name>/ folder).")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise fail("description", f"must be a string, got {a_kind(description)}.")

    models = validate_models(raw.get("models"), base_dir)
    for model in models.values():
        model.vocab_size = _vocab_size(model.resolved)
    engines = validate_engines(raw.get("engines"), models)
    prompts = validate_prompts(raw.get("prompts"), base_dir)
    measure = _validate_measure(raw.get("measure"))
    labels = [e.label for e in engines]
    engine_names = list(dict.fromkeys(labels + [e.engine for e in engines]))
    sweep = _validate_sweep(raw.get("sweep"), engine_names, [p.name for p in prompts])
    reference = validate_reference(raw.get("reference", "default"), engines, models)
    gates = _validate_gates(raw.get("gates"))
    if raw.get("quick") is not None:
        quick = as_mapping(raw["quick"], "quick", "a mapping of key paths to values (e.g. measure.repetitions: 1)")
        for key in quick:
            split_key_path(str(key))
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
        selected_engines=_validate_select(raw.get("select"), labels),
        raw=raw,
        source_path=source_path,
        file_sha256=file_sha256,
    )
    suite.cells = expand(suite)  # also checks context lengths against each model's maximum
    if not suite.cells:
        raise fail("sweep", "the matrix is empty after exclude/include and select; keep at least one combination.")
    check_engine_settings(suite)
    return suite


def _vocab_size(directory: Path | None) -> int | None:
    """config.json's vocab_size (validate_models has already checked that the file is a JSON object)."""
    if directory is None:
        return None
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    vocab = config.get("vocab_size") if isinstance(config, dict) else None
    return vocab if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0 else None


def _validate_gates(value: Any) -> list[Any] | dict[str, Any]:
    """The shapes orthrus.report.gates reads (its docstring): a list of rules, each a string or a
    mapping with ``rule``, or ``{baseline: FILE, rules: [...]}``. The grammar is the report's."""
    gates = [] if value is None else value
    rules, where = gates, "gates"
    if isinstance(gates, dict):
        check_keys(gates, ("rules", "baseline"), "gates")
        if gates.get("baseline") is not None:
            as_str(gates["baseline"], "gates.baseline")
        rules, where = gates.get("rules") or [], "gates.rules"
    if not isinstance(rules, list):
        raise fail(where, f"must be a list of gate rules (strings or mappings with 'rule'), got {a_kind(rules)}.")
    for i, gate in enumerate(rules):
        if not isinstance(gate, str):
            as_mapping(gate, f"{where}[{i}]", "a rule string or a mapping with 'rule'")
    return gates


def _validate_select(value: Any, labels: list[str]) -> list[str] | None:
    if value is None:
        return None
    select = as_mapping(value, "select")
    check_keys(select, SELECT_KEYS, "select")
    chosen = select.get("engines")
    if chosen is None:
        return None
    if isinstance(chosen, str):
        chosen = [chosen]
    if not isinstance(chosen, list) or not chosen:
        raise fail("select.engines", "must be a non-empty list of engine labels.")
    for i, label in enumerate(chosen):
        if label not in labels:
            raise fail(f"select.engines[{i}]", f"no engine is labelled {label!r}; {suggestion(str(label), labels)}")
    return list(dict.fromkeys(chosen))


def _validate_sweep(value: Any, labels: list[str], sources: list[str]) -> Sweep:
    sweep = as_mapping(value if value is not None else {}, "sweep")
    check_keys(sweep, SWEEP_KEYS, "sweep")
    axes: dict[str, list[Any]] = {}
    for key, axis in SWEEP_AXES.items():
        values = as_list(sweep.get(key, SWEEP_DEFAULTS[key]), f"sweep.{key}")
        indexed = isinstance(sweep.get(key), list)
        checked = [
            _axis_value(axis, item, f"sweep.{key}[{j}]" if indexed else f"sweep.{key}") for j, item in enumerate(values)
        ]
        for j, item in enumerate(checked):
            if item in checked[:j]:
                raise fail(f"sweep.{key}", f"{item} is listed twice; list each value once.")
        axes[axis] = checked
    result = Sweep(axes=axes)
    valid = {**axes, "engine": labels, "prompt_source": sources}
    for kind in ("exclude", "include"):
        entries = sweep.get(kind) or []
        if not isinstance(entries, list):
            raise fail(f"sweep.{kind}", f"must be a list of mappings over {', '.join(AXES)}.")
        for i, entry in enumerate(entries):
            path = f"sweep.{kind}[{i}]"
            entry = as_mapping(entry, path, f"a mapping over {', '.join(AXES)}")
            if not entry:
                raise fail(path, "is empty; name at least one axis (e.g. engine: dlm).")
            check_keys(entry, AXES, path)
            checked_entry = {}
            for axis, item in entry.items():
                item_path = f"{path}.{axis}"
                if axis in ("engine", "prompt_source"):
                    item = as_str(item, item_path)
                    choices = valid[axis]
                    if item not in choices:
                        what = "engine (label or name)" if axis == "engine" else "prompt source name"
                        raise fail(item_path, f"no {what} {item!r} in this suite; {suggestion(item, choices)}")
                else:
                    item = _axis_value(axis, item, item_path)
                    if kind == "exclude" and item not in valid[axis]:
                        key = next(k for k, a in SWEEP_AXES.items() if a == axis)
                        raise fail(item_path, f"{item} is not in sweep.{key} {valid[axis]}, so it excludes nothing.")
                checked_entry[axis] = item
            getattr(result, kind).append(checked_entry)
    return result


def _axis_value(axis: str, value: Any, path: str) -> Any:
    """A sweep value of ``axis`` checked by the vocabulary's rule for it."""
    rule = AXIS[axis].rule
    assert rule is not None, axis
    if value is None and rule.nullable:
        return None
    if rule.kind == "int":
        return as_int(value, path, None if rule.minimum is None else int(rule.minimum))
    number = as_number(value, path, rule.minimum, exclusive=rule.exclusive)
    if rule.maximum is not None and number > rule.maximum:
        low = "(" if rule.exclusive else "["
        raise fail(path, f"must be in {low}{rule.minimum:g}, {rule.maximum:g}], got {number:g}.")
    return number


def _validate_measure(value: Any) -> MeasureSpec:
    measure = as_mapping(value if value is not None else {}, "measure")
    check_keys(measure, MEASURE_KEYS, "measure")
    spec = MeasureSpec()
    spec.repetitions = as_int(measure.get("repetitions", spec.repetitions), "measure.repetitions", 1)
    spec.warmup = as_int(measure.get("warmup", spec.warmup), "measure.warmup", 0)
    spec.min_duration_s = as_number(measure.get("min_duration_s", 0.0), "measure.min_duration_s", 0.0)
    spec.max_repetitions = as_int(
        measure.get("max_repetitions", max(100, spec.repetitions)), "measure.max_repetitions", 1
    )
    if spec.max_repetitions < spec.repetitions:
        raise fail(
            "measure.max_repetitions",
            f"must be >= measure.repetitions ({spec.repetitions}), got {spec.max_repetitions}.",
        )
    spec.seed = as_int(measure.get("seed", 0), "measure.seed", 0)
    spec.threads = as_int(measure.get("threads", 0), "measure.threads", 0)
    spec.stop_at_eos = as_bool(measure.get("stop_at_eos", False), "measure.stop_at_eos")
    spec.sample_interval_ms = as_number(
        measure.get("sample_interval_ms", 10.0), "measure.sample_interval_ms", 0.0, exclusive=True
    )
    spec.order = as_choice(measure.get("order", spec.order), "measure.order", MEASURE_ORDERS)
    if spec.order in ROUND_ORDERS and spec.min_duration_s > 0:
        raise fail(
            "measure.order",
            f"{spec.order} measures exactly measure.repetitions per prompt; set measure.min_duration_s to 0 "
            "or measure.order to cells.",
        )
    return spec
