"""No code from a checkpoint runs unasked, and a broken checkpoint is one sentence, not a traceback.

Real processes with ``y`` on standard input (as a pipe, a CI step or a key press would give it to
transformers' "Do you wish to run the custom code?" prompt): a checkpoint directory whose
config.json and tokenizer_config.json name a module through ``auto_map`` is refused with our
sentence and exit 2, through every loader and under --dry-run, and the module (which writes a marker
file when imported) never runs unless the suite or the command line allows it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "orthrus" / "models" / "zoo"

PLANTED_MODULE = """
from pathlib import Path

Path({marker!r}).write_text("the checkpoint's code ran")

from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM


class PlantedConfig(Qwen3Config):
    model_type = "planted_lm"


class PlantedModel(Qwen3ForCausalLM):
    config_class = PlantedConfig


class PlantedTokenizer(PreTrainedTokenizerFast):
    pass
"""


def run(args: list[str], tmp_path: Path, stdin: str = "y\n") -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "hf" / "modules"))
    env["ORTHRUS_TEST_THREADS"] = env.get("ORTHRUS_TEST_THREADS", "1")
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, input=stdin, capture_output=True, text=True, env=env, timeout=300
    )


def copy_model(name: str, destination: Path) -> Path:
    shutil.copytree(ZOO / name, destination)
    return destination


def edit_json(file: Path, **changes) -> None:
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data, indent=2))


def plant(
    directory: Path, marker: Path, in_config: bool = True, in_tokenizer: bool = True, model_type: str = "planted_lm"
) -> Path:
    """Make ``directory`` a checkpoint that ships its own code, the way Hub models with custom code do
    (a model type transformers does not know, so that it would ask whether to run the code)."""
    (directory / "planted_code.py").write_text(PLANTED_MODULE.format(marker=str(marker)))
    if in_config:
        edit_json(
            directory / "config.json",
            model_type=model_type,
            auto_map={
                "AutoConfig": "planted_code.PlantedConfig",
                "AutoModel": "planted_code.PlantedModel",
                "AutoModelForCausalLM": "planted_code.PlantedModel",
            },
        )
    if in_tokenizer:
        edit_json(
            directory / "tokenizer_config.json",
            tokenizer_class="PlantedTokenizer",
            auto_map={"AutoTokenizer": [None, "planted_code.PlantedTokenizer"]},
        )
    return directory


def write_suite(tmp_path: Path, model: dict, engine: str = "ar") -> Path:
    suite = {
        "name": "planted",
        "models": {"m": model},
        "engines": [engine],
        "prompts": [{"source": "inline", "prompts": [{"id": "a", "text": "The first line.\n"}]}],
        "sweep": {"max_new_tokens": [4]},
        "measure": {"repetitions": 1, "warmup": 0},
    }
    file = tmp_path / "suite.yaml"
    file.write_text(json.dumps(suite))  # JSON is YAML
    return file


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


@pytest.fixture
def planted(tmp_path: Path, marker: Path) -> Path:
    return plant(copy_model("tiny-draft", tmp_path / "planted"), marker)


def assert_refused(proc: subprocess.CompletedProcess, marker: Path, *names: str) -> None:
    assert not marker.exists(), "the checkpoint's code ran"
    assert proc.returncode == 2, proc.stderr
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "ships its own code (planted_code.py named by auto_map in" in lines[0]
    for name in names:
        assert name in lines[0], lines[0]


# ------------------------------------------------------------------ custom code: refused unless allowed
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_suite_with_custom_code_is_refused_before_anything_runs(tmp_path, planted, marker, dry_run):
    suite = write_suite(tmp_path, {"path": str(planted)})
    out = tmp_path / "out"
    proc = run(["run_bench.py", str(suite), "--out", str(out), *(["--dry-run"] if dry_run else [])], tmp_path)
    assert_refused(proc, marker, f"models.m.path ({planted})", "models.m.trust_remote_code: true")
    assert not out.exists()


def test_dlm_suite_with_custom_code_is_refused(tmp_path, marker):
    planted = plant(copy_model("tiny-dlm", tmp_path / "planted"), marker)
    suite = write_suite(tmp_path, {"path": str(planted)}, engine="dlm")
    out = tmp_path / "out"
    proc = run(["run_bench.py", str(suite), "--out", str(out)], tmp_path)
    assert_refused(proc, marker, "models.m.path", "models.m.trust_remote_code: true")
    assert not out.exists()


def test_a_tokenizer_with_custom_code_is_refused(tmp_path, marker):
    """A clean model whose suite names a tokenizer directory that ships code."""
    tokenizer = plant(copy_model("tiny-tokenizer", tmp_path / "tokenizer"), marker, in_config=False)
    suite = write_suite(tmp_path, {"path": "tiny-draft", "tokenizer": str(tokenizer)})
    proc = run(["run_bench.py", str(suite), "--dry-run"], tmp_path)
    assert_refused(proc, marker, "models.m.tokenizer", "tokenizer_config.json", "models.m.trust_remote_code: true")


@pytest.mark.parametrize("zoo_model, engine", [("tiny-orthrus", "orthrus"), ("tiny-dlm", "dlm")])
def test_generate_with_custom_code_is_refused(tmp_path, marker, zoo_model, engine):
    """tiny-orthrus keeps its model type 'orthrus', which our loader builds and transformers does not know:
    before, the model loaded, the tokenizer's AutoConfig asked on stdin, read the y, and ran the code."""
    model_type = "orthrus" if zoo_model == "tiny-orthrus" else "planted_lm"
    planted = plant(copy_model(zoo_model, tmp_path / "planted"), marker, model_type=model_type)
    args = ["generate", "--model", str(planted), "--engine", engine, "--prompt", "hi", "--max-new-tokens", "4"]
    proc = run(["-m", "orthrus", *args], tmp_path)
    assert_refused(proc, marker, f"--model {planted}", "--trust-remote-code")


def test_the_suite_can_allow_a_tokenizers_code(tmp_path, marker):
    """trust_remote_code: true is the one way in: then the tokenizer's own class is imported."""
    tokenizer = plant(copy_model("tiny-tokenizer", tmp_path / "tokenizer"), marker, in_config=False)
    suite = write_suite(tmp_path, {"path": "tiny-draft", "tokenizer": str(tokenizer), "trust_remote_code": True})
    proc = run(["run_bench.py", str(suite), "--dry-run"], tmp_path, stdin="")
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()


def test_every_transformers_load_in_the_package_says_whether_code_may_run():
    """Every AutoConfig/AutoModel*/AutoTokenizer/*.from_pretrained call passes trust_remote_code."""
    import ast

    missing = []
    for file in sorted((ROOT / "orthrus").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "from_pretrained" and not any(
                    k.arg in ("trust_remote_code", None) for k in node.keywords
                ):
                    missing.append(f"{file.relative_to(ROOT)}:{node.lineno}")
    assert not missing, missing


# ------------------------------------------------------------------ broken checkpoints: one sentence
BROKEN_CONFIGS = {
    "list": (b"[1, 2]", "config.json holds an array, not a JSON object"),
    "null": (b"null", "config.json holds null, not a JSON object"),
    "not-utf8": (b'{"model_type": "qwen3\xe9"}', "config.json is not UTF-8 text"),
}


def truncate(file: Path) -> None:
    os.truncate(file, file.stat().st_size - 100)


def assert_one_sentence(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_a_config_that_is_not_an_object_is_one_sentence_under_dry_run(tmp_path, case):
    content, message = BROKEN_CONFIGS[case]
    model = copy_model("tiny-draft", tmp_path / "model")
    (model / "config.json").write_bytes(content)
    proc = run(["run_bench.py", str(write_suite(tmp_path, {"path": str(model)})), "--dry-run"], tmp_path)
    assert_one_sentence(proc, "models.m.path", str(model / "config.json"), message)


@pytest.mark.parametrize(
    "case, message",
    [
        ("safetensors", "model.safetensors is not a complete safetensors file"),
        ("tokenizer.json", "tokenizer.json is not a valid tokenizer file"),
        ("tokenizer_config.json", "tokenizer_config.json holds a string, not a JSON object"),
    ],
)
def test_a_broken_checkpoint_file_is_one_sentence_under_dry_run(tmp_path, case, message):
    model = copy_model("tiny-draft", tmp_path / "model")
    if case == "safetensors":
        truncate(model / "model.safetensors")
    elif case == "tokenizer.json":
        (model / "tokenizer.json").write_bytes((model / "tokenizer.json").read_bytes()[:2000])
    else:
        (model / "tokenizer_config.json").write_text('"x"')
    out = tmp_path / "out"
    suite = write_suite(tmp_path, {"path": str(model)})
    extra = ["--dry-run"] if case != "safetensors" else ["--out", str(out)]
    proc = run(["run_bench.py", str(suite), *extra], tmp_path)
    assert_one_sentence(proc, f"models.m.path: {model}", message)
    assert not out.exists()


@pytest.mark.parametrize("case", ["list", "safetensors"])
def test_generate_on_a_broken_checkpoint_is_one_sentence(tmp_path, case):
    model = copy_model("tiny-draft", tmp_path / "model")
    if case == "list":
        (model / "config.json").write_text("[]")
        message = "config.json holds an array, not a JSON object"
    else:
        truncate(model / "model.safetensors")
        message = "model.safetensors is not a complete safetensors file"
    proc = run(["-m", "orthrus", "generate", "--model", str(model), "--engine", "ar", "--prompt-ids", "5,6"], tmp_path)
    assert_one_sentence(proc, str(model), message)


def test_a_checkpoint_that_fails_to_load_inside_a_run_fails_its_cells_with_one_line(tmp_path):
    """Weights that pass planning but do not build the model: the cell fails, recorded, the run goes on."""
    model = copy_model("tiny-draft", tmp_path / "model")
    state = load_file(str(model / "model.safetensors"))
    state.pop("model.norm.weight")
    save_file(state, str(model / "model.safetensors"))
    out = tmp_path / "out"
    proc = run(["run_bench.py", str(write_suite(tmp_path, {"path": str(model)})), "--out", str(out)], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (results,) = out.glob("*/*/results.jsonl")
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["status"] == "failed"
    assert record["error"].startswith("loading model 'm' failed: ") and "\n" not in record["error"]
    assert "model.norm.weight" in record["error"]
