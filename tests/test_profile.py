"""Latency profiles, published Qwen3 shapes and projected speedups (orthrus.profile)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from orthrus.errors import UserInputError
from orthrus.profile import shapes
from orthrus.profile.cli import main_project
from orthrus.profile.project import (
    AcceptanceSource,
    acceptance_from_yaml,
    conditional_from_unconditional,
    conditional_rates,
    expected_accepted,
    geometric_rates,
    honesty_rows,
    project,
    project_source,
    projection_document,
    tokens_per_cycle,
    unconditional_from_conditional,
)
from orthrus.profile.report import format_projection_text, projection_section, render_projection_section
from orthrus.profile.timing import PASSES, LatencyProfile, OutsideProfile, PassTiming, measure_profile

ROOT = Path(__file__).resolve().parents[1]

# Official figures. Hub: the safetensors "total" of Hugging Face Qwen/Qwen3-<size> (0.6B and 1.7B
# store their tied LM head a second time, so the unique count is total - vocab x hidden). Card:
# "Number of Parameters (Non-Embedding)" of each model card.
OFFICIAL = {
    "0.6b": {"hub_total": 751_632_384, "head_stored_twice": True, "card_non_embedding": 0.44e9},
    "1.7b": {"hub_total": 2_031_739_904, "head_stored_twice": True, "card_non_embedding": 1.4e9},
    "4b": {"hub_total": 4_022_468_096, "head_stored_twice": False, "card_non_embedding": 3.6e9},
    "8b": {"hub_total": 8_190_735_360, "head_stored_twice": False, "card_non_embedding": 6.95e9},
    "14b": {"hub_total": 14_768_307_200, "head_stored_twice": False, "card_non_embedding": 13.2e9},
    "32b": {"hub_total": 32_762_123_264, "head_stored_twice": False, "card_non_embedding": 31.2e9},
}
TEST_SHAPE = shapes.Qwen3Shape(2, 64, 4, 2, 128, True, head_dim=16, vocab=256, max_positions=512)


@pytest.fixture
def test_shape(monkeypatch):
    """A real (tiny) shape registered beside the published ones, to build and time quickly."""
    monkeypatch.setitem(shapes.QWEN3_SHAPES, "test", TEST_SHAPE)
    return "qwen3-shape:test"


# ---------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", list(OFFICIAL))
def test_qwen3_shapes_match_published_parameter_counts(name):
    official = OFFICIAL[name]
    shape = shapes.QWEN3_SHAPES[name]
    model = shapes.meta_model(f"qwen3-shape:{name}")  # meta device: shapes only, no memory
    counts = shapes.parameter_counts(model)
    unique = official["hub_total"] - (shape.vocab * shape.hidden if official["head_stored_twice"] else 0)
    assert abs(counts["params_ar"] - unique) / unique < 0.01
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)
    non_embedding = counts["params_ar"] - embeddings
    assert abs(non_embedding - official["card_non_embedding"]) / official["card_non_embedding"] < 0.01
    # the diffusion view: Q, K, V, O and the two norms of every layer once more
    attn = sum(p.numel() for p in model.model.layers[0].self_attn.parameters()) / 2
    assert counts["params_diffusion"] == attn * shape.layers
    assert model.config.head_dim == 128 and model.config.vocab_size == 151936
    assert model.config.max_position_embeddings == 40960


def test_unknown_shape_name_is_one_sentence():
    with pytest.raises(UserInputError, match=r"unknown model shape 'qwen3-shape:3b'; use one of .*qwen3-shape:8b"):
        shapes.load_model("qwen3-shape:3b")


def test_shape_model_is_built_on_device_in_dtype(test_shape):
    model = shapes.build_shape_model(test_shape, "cpu", torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied as published
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert float(model.model.layers[0].input_layernorm.weight.float().mean()) == 1.0
    assert 0.01 < float(model.model.layers[1].mlp.up_proj.weight.float().std()) < 0.03
    shape = shapes.model_shape(model.config)
    assert shape["name"] == test_shape and shapes.spec_shape(test_shape) == shape
    logits = model.forward_ar(torch.tensor([[3, 4, 5]]), None, 0)
    assert logits.shape == (1, 3, 256) and torch.isfinite(logits).all()


def test_shape_model_tensors_are_not_copies_of_one_another(monkeypatch):
    """Random weights tiled from one pool, but each tensor reads it in its own order: the diffusion
    twins differ from the AR projections, layers differ, an untied head differs from the embedding
    (and the tied one is the embedding); the same seed gives the same weights in a new build."""
    untied = shapes.Qwen3Shape(3, 64, 4, 2, 128, False, head_dim=16, vocab=256, max_positions=512)
    monkeypatch.setitem(shapes.QWEN3_SHAPES, "untied", untied)
    model = shapes.build_shape_model("qwen3-shape:untied", "cpu", torch.float32)
    attn = model.model.layers[0].self_attn
    for twin in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert not torch.equal(getattr(attn, twin).weight, getattr(attn, f"{twin}_diff").weight), twin
    matrices = [p for name, p in model.named_parameters() if p.dim() == 2]
    layers = [model.model.layers[i].mlp.up_proj.weight for i in range(3)]
    assert not torch.equal(layers[0], layers[1]) and not torch.equal(layers[1], layers[2])
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    # not even a shifted copy: no row of one matrix of a layer is a row of its twin or of the next layer
    first = {tuple(row.tolist()) for row in attn.q_proj.weight}
    assert not first & {tuple(row.tolist()) for row in attn.q_proj_diff.weight}
    assert not first & {tuple(row.tolist()) for row in model.model.layers[1].self_attn.q_proj.weight}
    for p in matrices:  # still the pool's distribution, every value finite
        assert torch.isfinite(p).all() and 0.01 < float(p.std()) < 0.03
    again = shapes.build_shape_model("qwen3-shape:untied", "cpu", torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    counts = shapes.parameter_counts(model)
    assert counts == shapes.parameter_counts(shapes.meta_model("qwen3-shape:untied"))


def test_miniature_shapes_are_known_but_not_offered_as_published():
    """The CPU rehearsal's stand-ins for 1.7B (tied), 8B (untied) and 0.6B (the draft): built and
    named like the published shapes, never listed among them."""
    for name in ("tiny", "tiny-untied", "tiny-draft"):
        shape = shapes.spec_shape(f"qwen3-shape:{name}")
        assert shape["name"] == f"qwen3-shape:{name}" and shape["vocab"] > 4096  # the zoo tokenizer's ids fit
    assert not shapes.spec_shape("qwen3-shape:tiny-untied")["tied_embeddings"]
    with pytest.raises(UserInputError) as err:
        shapes.qwen3_shape("qwen3-shape:huge")
    assert "tiny" not in str(err.value)


def test_shape_names_for_zoo_and_published():
    assert shapes.spec_shape("qwen3-shape:8b")["name"] == "qwen3-shape:8b"
    zoo = shapes.spec_shape("tiny-orthrus")
    assert zoo is not None and zoo["layers"] == 5 and not zoo["name"].startswith("qwen3-shape:")
    assert shapes.spec_shape("/nowhere/Orthrus-Qwen3-8B") is None  # not on this machine


# ---------------------------------------------------------------------- timing and the profile file
@pytest.fixture
def measured(test_shape):
    model = shapes.load_model(test_shape, "cpu", "float32")
    return measure_profile(model, test_shape, contexts=[8, 32], blocks=[1, 2, 4], repeats=2, warmup=1)


def test_profile_schema_and_round_trip(measured, tmp_path):
    data = measured.to_dict()
    assert data["format"] == "orthrus-latency-profile" and data["version"] == 3
    assert data["device"]["type"] == "cpu" and data["device"]["name"]
    assert data["dtype"] == "float32" and data["versions"]["torch"] == torch.__version__
    assert data["versions"]["transformers"] and data["threads"]["torch_intra_op"] >= 1
    assert data["model"]["shape"]["name"] == "qwen3-shape:test" and data["model"]["params_ar"] > 0
    assert data["settings"]["timer"] == "perf_counter" and data["settings"]["repeats"] == 2
    cells = {(t["context"], t["kind"], t["block"]) for t in data["timings"]}
    assert cells == (
        {(c, kind, 1) for c in (8, 32) for kind in ("decode", "ar_step")}
        | {(c, kind, k) for c in (8, 32) for kind in ("verify", "draft") for k in (1, 2, 4)}
        | {(c, "orthrus_cycle", k) for c in (8, 32) for k in (2, 4)}  # a cycle drafts: K >= 2
    )
    assert measured.has_engine_steps
    for t in data["timings"]:
        assert 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"] and t["repeats"] == 2 and t["batch"] == 1
    path = measured.save(tmp_path / "p.json")
    assert LatencyProfile.load(path) == measured
    assert json.loads(path.read_text()) == data


def test_profile_cache_is_left_at_its_context(test_shape):
    from orthrus.profile.timing import PassRunner

    model = shapes.load_model(test_shape, "cpu", "float32")
    runner = PassRunner(model, 40, 4)
    runner.set_context(32)
    for tensor in (*runner.cache.keys, *runner.cache.values):
        tensor.normal_()
    held = [t[:, :, :32].clone() for t in (*runner.cache.keys, *runner.cache.values)]
    with torch.inference_mode():
        for kind, block in (("decode", 1), ("verify", 4), ("draft", 4)):
            runner.run(kind, block)
            assert runner.context == 32  # every pass runs over the same 32 committed entries
            for before, now in zip(held, (*runner.cache.keys, *runner.cache.values)):
                assert torch.equal(now[:, :, :32], before)


def test_profile_times_the_engines_own_loops_in_inference_mode(test_shape, monkeypatch):
    """The engines decode under inference mode; a profile timed with autograd on read the decode
    pass 20-40% slow on a CPU. The engine steps are the engines' real loops: every orthrus cycle
    goes through OrthrusEngine._cycle, one per step."""
    from orthrus.engines.orthrus_engine import OrthrusEngine
    from orthrus.profile.timing import EngineLoops

    model = shapes.load_model(test_shape, "cpu", "float32")
    modes, cycles = [], []
    forward_ar, cycle = model.forward_ar, OrthrusEngine._cycle
    monkeypatch.setattr(
        model, "forward_ar", lambda *a, **k: modes.append(torch.is_inference_mode_enabled()) or forward_ar(*a, **k)
    )
    monkeypatch.setattr(OrthrusEngine, "_cycle", lambda self, *a: cycles.append(a[1]) or cycle(self, *a))
    profile = measure_profile(model, test_shape, contexts=[16], blocks=[1, 4], repeats=3, warmup=0, warm_in=1)
    assert modes and all(modes)
    assert cycles == [4] * 4  # repeats 3, no warm-up: one round of one run of the loop, 1 untimed + 3 timed
    assert profile.settings["warm_in"] == 1
    assert {(t.kind, t.block, t.repeats) for t in profile.timings if t.kind in ("ar_step", "orthrus_cycle")} == {
        ("ar_step", 1, 3),
        ("orthrus_cycle", 4, 3),
    }
    with torch.inference_mode():
        loops = EngineLoops(model, 16, [4], steps=2, warm_in=3)
        assert len(loops.run("ar_step", 1)) == 2
        cycles.clear()
        times = loops.run("orthrus_cycle", 4)
    assert len(times) == 2 and all(ms > 0 for ms in times) and len(cycles) == 5  # the first 3 untimed


def test_profile_refuses_contexts_beyond_the_model(test_shape):
    model = shapes.load_model(test_shape, "cpu", "float32")
    with pytest.raises(UserInputError, match="exceeds .*max_position_embeddings"):
        measure_profile(model, test_shape, contexts=[600], blocks=[4], repeats=1)
    with pytest.raises(UserInputError, match="--warm-in must be >= 0, got -1"):
        measure_profile(model, test_shape, contexts=[8], blocks=[4], repeats=1, warm_in=-1)


def hand_profile(
    shape_spec="qwen3-shape:8b", device="Test GPU", params=8, draft_ms=None, engine_steps=False
) -> LatencyProfile:
    """decode 10 ms at context 1000 and 20 ms at 3000; verify(K) = draft(K) = decode + K/2 ms.
    With ``engine_steps``: the ar step 1 ms more than decode, the orthrus cycle 3 ms more than
    draft + verify (the engines' host work between passes)."""
    rows = []
    for context, decode in ((1000, 10.0), (3000, 20.0)):
        rows.append(PassTiming(context, 1, "decode", decode if draft_ms is None else draft_ms, 1, 30, 5))
        for k in (1, 2, 4, 8):
            rows.append(PassTiming(context, k, "verify", decode + k / 2, 1, 30, 5))
            rows.append(PassTiming(context, k, "draft", decode + k / 2, 1, 30, 5))
        if engine_steps:
            rows.append(PassTiming(context, 1, "ar_step", decode + 1, 1, 30, 5))
            for k in (2, 4, 8):
                rows.append(PassTiming(context, k, "orthrus_cycle", 2 * (decode + k / 2) + 3, 1, 30, 5))
    shape = shapes.spec_shape(shape_spec)
    return LatencyProfile(
        device={"type": "cuda", "name": device},
        dtype="bfloat16",
        model={"spec": shape_spec, "shape": shape, "params_ar": params},
        timings=rows,
        threads={"torch_intra_op": 1},
    )


def test_profile_interpolates_and_never_extrapolates():
    profile = hand_profile()
    assert profile.time_ms("decode", 2000) == pytest.approx(15.0)
    assert profile.time_ms("verify", 1000, 6) == pytest.approx(13.0)  # between K=4 (12) and K=8 (14)
    assert profile.time_ms("draft", 2000, 3) == pytest.approx(16.5)
    with pytest.raises(OutsideProfile, match="context 4000 is outside"):
        profile.time_ms("decode", 4000)
    with pytest.raises(OutsideProfile, match="block 16 is outside"):
        profile.time_ms("verify", 1000, 16)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="something-else"), "is not an Orthrus latency profile"),
        (lambda d: d.update(version=99), "format version 99"),
        (lambda d: d.pop("timings"), "malformed latency profile"),
        (lambda d: d["timings"][0].update(median_ms=-1.0), "non-positive time"),
        (lambda d: d.update(timings=[t for t in d["timings"] if t["kind"] != "draft"]), "no draft timings"),
        (lambda d: d["timings"][0].update(kind="prefill"), "unknown pass 'prefill'"),
        (
            lambda d: d.update(timings=[t for t in d["timings"] if t["kind"] != "orthrus_cycle"]),
            "engine steps ar_step without orthrus_cycle",
        ),
    ],
)
def test_malformed_profile_is_one_sentence(tmp_path, mutate, message):
    data = hand_profile(engine_steps=True).to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserInputError, match=message):
        LatencyProfile.load(path)


def test_a_version_1_profile_still_loads_without_engine_steps(tmp_path):
    data = hand_profile().to_dict() | {"version": 1}  # what profile wrote before engine steps
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data))
    profile = LatencyProfile.load(path)
    assert not profile.has_engine_steps and profile.time_ms("decode", 1000) == 10.0


def test_profile_that_is_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(UserInputError, match="is not valid JSON"):
        LatencyProfile.load(path)


# ---------------------------------------------------------------------- arithmetic
def test_acceptance_conventions():
    drafted = [3, 3, 3, 3, 3]
    accepted = [3, 0, 1, 3, 2]
    c = conditional_rates(drafted, accepted)
    assert c == pytest.approx([4 / 5, 3 / 4, 2 / 3])
    u = unconditional_from_conditional(c)
    assert u == pytest.approx([4 / 5, 3 / 5, 2 / 5])  # our acceptance_by_position (unconditional)
    assert conditional_from_unconditional(u) == pytest.approx(c)
    # with every cycle drafting K-1: tokens per cycle = 1 + the token-weighted mean of accepted
    assert tokens_per_cycle(c, 4) == pytest.approx(1 + sum(accepted) / len(accepted))
    assert expected_accepted(c, 2) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        expected_accepted(c, 5)
    # a shrunk last block (2 drafted) does not count as a rejection at position 3
    assert conditional_rates([3, 2], [3, 2]) == [1.0, 1.0, 1.0]
    assert conditional_rates([4, 4], [1, 0]) == [0.5, 0.0, 0.0, 0.0]  # nobody reached 3: u_3 = 0
    assert tokens_per_cycle(geometric_rates(5.0, 8), 8) == pytest.approx(5.0)
    assert geometric_rates(8.0, 8) == pytest.approx([1.0] * 7)


def test_projection_arithmetic_known_answer():
    # c = [0.8, 0.5, 0.5] -> u = [0.8, 0.4, 0.2] -> tau(4) = 2.4; t_AR(1) = 10, t_draft(4) = t_verify(4) = 12
    source = AcceptanceSource("hand", "orthrus", [0.8, 0.5, 0.5], block_size=4, context=1000.0)
    rows = {r.block: r for r in project_source(source, hand_profile())}
    assert set(rows) == {2, 4}  # K=8 needs 7 rates; K=1 drafts nothing
    row = rows[4]
    assert row.tokens_per_cycle == pytest.approx(2.4)
    assert (row.t_ar1_ms, row.t_draft_ms, row.t_verify_ms) == pytest.approx((10.0, 12.0, 12.0))
    assert row.speedup == pytest.approx(2.4 * 10 / 24)
    assert row.tokens_per_s == pytest.approx(1e3 * 2.4 / 24) and row.ar_tokens_per_s == pytest.approx(100.0)
    assert rows[2].speedup == pytest.approx(1.8 * 10 / 22) and "truncated from K=4" in rows[2].note
    assert row.best and not rows[2].best
    assert row.arithmetic == "2.40 x 10.000 ms / (12.000 ms + 12.000 ms) = 1.00x"
    # at context 2000 every time is interpolated half-way
    mid = {r.block: r for r in project_source(AcceptanceSource("m", "orthrus", [1.0] * 3, 4, 2000.0), hand_profile())}
    assert mid[4].speedup == pytest.approx(4 * 15 / (2 * 17))


def test_projection_uses_the_engines_own_steps_where_the_profile_has_them():
    # tau(4) = 2.4 as above; t_step = 11 ms, t_cycle(4) = 12 + 12 + 3 = 27 ms; passes still shown
    source = AcceptanceSource("hand", "orthrus", [0.8, 0.5, 0.5], block_size=4, context=1000.0)
    rows = {r.block: r for r in project_source(source, hand_profile(engine_steps=True))}
    row = rows[4]
    assert row.basis == "engine steps" and (row.t_step_ms, row.t_cycle_ms) == pytest.approx((11.0, 27.0))
    assert row.speedup == pytest.approx(2.4 * 11 / 27)
    assert row.speedup_passes == pytest.approx(2.4 * 10 / 24)
    assert row.tokens_per_s == pytest.approx(1e3 * 2.4 / 27) and row.ar_tokens_per_s == pytest.approx(1e3 / 11)
    assert row.arithmetic == (
        "2.40 x 11.000 ms / 27.000 ms = 0.98x (passes: 2.40 x 10.000 ms / (12.000 ms + 12.000 ms) = 1.00x)"
    )
    # without engine steps the passes decide, and project() says why
    plain = {r.block: r for r in project_source(source, hand_profile())}
    assert plain[4].basis == "passes" and plain[4].speedup == pytest.approx(1.0) and plain[4].t_cycle_ms is None
    source.shape = shapes.spec_shape("qwen3-shape:8b")
    [device] = project([source], {"old.json": hand_profile()})
    assert any("no engine steps" in w and "re-measure" in w for w in device.warnings)
    [device] = project([source], {"new.json": hand_profile(engine_steps=True)})
    assert not any("no engine steps" in w for w in device.warnings)


def test_assisted_uses_the_draft_models_decode_time():
    target = hand_profile()
    draft = hand_profile("qwen3-shape:0.6b", params=1, draft_ms=2.0)
    source = AcceptanceSource(
        "assisted", "assisted", [0.5] * 7, block_size=None, context=1000.0, shape=target.model["shape"]
    )
    source.draft_shape = draft.model["shape"]
    out = project([source], {"t.json": target, "d.json": draft})
    rows = {r.block: r for r in out[0].rows}
    assert out[0].draft_profile == "d.json"
    assert rows[4].t_draft_ms == pytest.approx(3 * 2.0)
    assert rows[4].speedup == pytest.approx((1 + 0.5 + 0.25 + 0.125) * 10 / (6 + 12))


def test_assisted_projection_is_labelled_not_comparable_everywhere():
    """The assisted projection leaves out transformers' own per-step overhead in generate() (on the
    CPU its honesty rows read +200% and +292%): its rows say so in projection.json, the text and the
    report, and the honesty check's count leaves them out."""
    target = hand_profile(engine_steps=True)
    draft = hand_profile("qwen3-shape:0.6b", params=1, draft_ms=2.0)
    measured = {"speedup_decode": 0.5, "speedup_e2e": 0.5, "speedup_decode_by_round": [0.5]}
    assisted = AcceptanceSource("assisted", "assisted", [0.5] * 7, None, 1000.0, shape=target.model["shape"])
    assisted.draft_shape, assisted.measured = draft.model["shape"], measured
    orthrus = AcceptanceSource("orthrus", "orthrus", [0.8, 0.5, 0.5], 4, 1000.0, shape=target.model["shape"])
    orthrus.measured = {"speedup_decode": 0.98, "speedup_decode_by_round": [0.98]}
    sources = [assisted, orthrus]
    device = project(sources, {"t.json": target, "d.json": draft}, run_device={"name": "Test GPU"})
    document = json.loads(json.dumps(projection_document(device, sources, None)))
    rows = document["devices"][0]["rows"]
    assert {r["engine"]: r["comparable"] for r in rows} == {"assisted": False, "orthrus": True}
    assert all("not comparable" in r["note"] and "generate()" in r["note"] for r in rows if r["engine"] == "assisted")
    assert "generate()" in document["not_comparable"]["assisted"]
    checks = honesty_rows(document)
    assert {h["engine"]: h["comparable"] for h in checks} == {"assisted": False, "orthrus": True}
    count = document["honesty"]
    assert (
        count["comparable"] == 1
        and count["within"] == 1
        and count["not_comparable"] == len([h for h in checks if h["engine"] == "assisted"])
    )
    assert count["not_comparable_engines"] == ["assisted"]
    text = format_projection_text(document)
    assert "(not comparable)" in text
    assert "1 of 1 comparable rows within 15%" in text and "not comparable, left out of the count" in text
    html = render_projection_section(document)
    assert "<small>not comparable</small>" in html and "<code>assisted</code> rows are not comparable" in html
    # a projection.json from before the flag: an assisted row is still not comparable, by its engine
    for row in rows:
        row.pop("comparable")
    assert [h["comparable"] for h in honesty_rows(document)] == [h["comparable"] for h in checks]


def test_outside_the_profile_is_said_not_guessed():
    rows = project_source(AcceptanceSource("far", "orthrus", [0.9] * 3, 4, 9000.0), hand_profile())
    assert all(r.speedup is None and "outside the profile" in r.note for r in rows)


def test_published_acceptance_yaml_projects(tmp_path):
    sources = acceptance_from_yaml(ROOT / "reports/profiles/paper_acceptance.yaml")
    gsm8k = next(s for s in sources if s.label == "Qwen3-8B GSM8K")
    assert tokens_per_cycle(gsm8k.conditional, 32) == pytest.approx(9.6)
    assert gsm8k.shape["name"] == "qwen3-shape:8b" and "constant conditional" in gsm8k.assumption
    tpf = next(s for s in sources if s.label == "Qwen3-1.7B GSM8K")
    assert tokens_per_cycle(tpf.conditional, 32) == pytest.approx(8.4)  # per cycle TPF = tau / 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("entries:\n  - {name: x, model: qwen3-shape:8b, block_size: 8, tokens_per_cycle: 12}\ncontext: 1\n")
    with pytest.raises(UserInputError, match="impossible for block 8"):
        acceptance_from_yaml(bad)


# ---------------------------------------------------------------------- run directories and the CLI
def write_run(run_dir: Path, model_path: str = "tiny-orthrus", label: str = "orthrus", rounds: int = 1) -> Path:
    """A run directory as the harness writes it: AR and Orthrus cells, two prompts; in each
    repetition after the first, Orthrus takes 1.25x as long as in the one before."""
    run_dir.mkdir(parents=True, exist_ok=True)
    common = {"model": "base", "model_path": model_path, "dtype": "float32", "device": "cpu", "prompt_source": "s"}
    common |= {"context_length": 1000, "temperature": 0.0, "max_new_tokens": 9, "batch_size": 1}
    cells = {
        "ar1": {**common, "engine": "ar", "label": "ar", "block_size": None},
        "or1": {**common, "engine": "orthrus", "label": label, "block_size": 4},
    }
    lines = []
    for repeat in range(rounds):
        for prompt, (ar_ms, or_ms) in {"p0": (90.0, 45.0), "p1": (80.0, 40.0)}.items():
            or_ms *= 1.25**repeat
            lines.append({"cell_id": "ar1", "cell": cells["ar1"], "prompt_id": prompt, "repeat": repeat, "run_id": "r"})
            lines[-1] |= {"new_tokens": 9, "ttft_ms": 10.0, "e2e_ms": 10.0 + ar_ms}
            lines.append({"cell_id": "or1", "cell": cells["or1"], "prompt_id": prompt, "repeat": repeat, "run_id": "r"})
            lines[-1] |= {"new_tokens": 9, "ttft_ms": 10.0, "e2e_ms": 10.0 + or_ms, "block_size": 4}
            lines[-1] |= {"drafted_per_cycle": [3, 3, 3, 3, 3], "accepted_per_cycle": [3, 0, 1, 3, 2]}
    (run_dir / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = {"devices": [{"device": "cpu", "name": "Test GPU"}], "threads": {"torch_intra_op": 1}}
    (run_dir / "environment.json").write_text(json.dumps(env))
    return run_dir


def tiny_profile_file(tmp_path: Path, spec: str = "tiny-orthrus", name: str = "p.json") -> str:
    profile = hand_profile(spec)
    return str(profile.save(tmp_path / name))


def test_project_a_run_writes_projection_and_the_honesty_check(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main_project([str(run), "--profile", tiny_profile_file(tmp_path)]) == 0
    text = capsys.readouterr().out
    document = json.loads((run / "projection.json").read_text())
    device = document["devices"][0]
    assert device["device"] == "Test GPU" and device["same_machine"]
    row = next(r for r in device["rows"] if r["block"] == 4)
    # tau = 2.8 (see test_acceptance_conventions); t_AR(1) = 10 + 0.5 * 9/2 / 2000 * 10 ...: context 1004.5
    t_ar = 10 + 10 * 4.5 / 2000
    assert row["tokens_per_cycle"] == pytest.approx(2.8)
    assert row["speedup"] == pytest.approx(2.8 * t_ar / (2 * (t_ar + 2)))
    assert row["measured_speedup_decode"] == pytest.approx(2.0)  # AR 90/80 ms vs Orthrus 45/40 ms per 8 tokens
    honesty = honesty_rows(document)
    assert honesty and honesty[0]["error_pct"] == pytest.approx(100 * (row["speedup"] / 2.0 - 1))
    assert "honesty check" in text and "tau x t_AR(1)" in text
    assert document["sources"][0]["unconditional_acceptance"] == pytest.approx([0.8, 0.6, 0.4])


def test_the_honesty_check_shows_each_rounds_own_speedup(tmp_path, capsys):
    """Repetition r of Orthrus against repetition r of AR (in round order, measured in the same
    round): the spread says how far the machine moved under the median the check compares with."""
    run = write_run(tmp_path / "run", rounds=3)
    assert main_project([str(run), "--profile", tiny_profile_file(tmp_path)]) == 0
    [check] = honesty_rows(json.loads((run / "projection.json").read_text()))
    assert check["measured_by_round"] == pytest.approx([2.0, 1.6, 1.28])
    assert check["measured_decode"] == pytest.approx(1.6)  # per prompt the median over rounds
    assert "2.00 1.60 1.28" in capsys.readouterr().out


def test_the_honesty_check_warns_when_the_run_measured_cell_after_cell(tmp_path, capsys):
    """Cells measured one after another see different machine loads, so their measured ratio is
    no fair check of a projection; measure.order rounds is what the check wants (no warning)."""
    run = write_run(tmp_path / "run")
    for order, warned in (("cells", True), ("rounds", False), (None, True)):
        measure = {"repetitions": 1} | ({"order": order} if order else {})  # absent: cells, the default
        (run / "suite.yaml").write_text(json.dumps({"name": "x", "measure": measure}))
        assert main_project([str(run), "--profile", tiny_profile_file(tmp_path)]) == 0
        err = capsys.readouterr().err
        warnings = json.loads((run / "projection.json").read_text())["devices"][0]["warnings"]
        assert any("measure.order: rounds" in w for w in warnings) is warned, order
        assert ("measure.order: rounds" in err) is warned
        assert honesty_rows(json.loads((run / "projection.json").read_text())), "the check is still shown"


def test_shape_mismatch_is_one_sentence_exit_2(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    profile = tiny_profile_file(tmp_path, "qwen3-shape:8b")
    assert main_project([str(run), "--profile", profile]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: profile ")
    assert "qwen3-shape:8b" in err and "tiny-orthrus" in err and "--any-shape" in err
    assert main_project([str(run), "--profile", profile, "--any-shape"]) == 0
    captured = capsys.readouterr()
    assert "warning: shape differs" in captured.err
    document = json.loads((run / "projection.json").read_text())
    assert document["devices"][0]["warnings"] and not honesty_rows(document)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profile", "missing.json"], "does not exist"),
        (["--profile", "BAD"], "is not valid JSON"),
        ([], "give a run directory or --acceptance"),
    ],
)
def test_project_bad_input_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "BAD").write_text("[")
    args = [a.replace("BAD", str(tmp_path / "BAD")) for a in args]
    if "--profile" not in args:
        args += ["--profile", tiny_profile_file(tmp_path)]
    else:
        args = [str(write_run(tmp_path / "run")), *args]
    assert main_project(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_projection_section_renders_escaped(tmp_path):
    run = write_run(tmp_path / "run", label="<script>alert(1)</script>")
    assert main_project([str(run), "--profile", tiny_profile_file(tmp_path), "--quiet"]) == 0
    html, document = projection_section(run)
    assert "<h2>Projected on Test GPU (bfloat16)</h2>" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html and "https://" not in html
    assert 'class="best"' in html and document["format"] == "orthrus-projection"
    assert render_projection_section(document) == html
    assert "Test GPU" in format_projection_text(document)
    assert projection_section(tmp_path) is None


def test_projection_document_names_every_device():
    source = AcceptanceSource("a", "orthrus", [0.9] * 7, 8, 1000.0, shape=shapes.spec_shape("qwen3-shape:8b"))
    profiles = {"gpu.json": hand_profile(device="GPU A"), "other.json": hand_profile(device="GPU B")}
    document = projection_document(project([source], profiles), [source], None)
    assert [d["device"] for d in document["devices"]] == ["GPU A", "GPU B"]
    assert all(math.isfinite(r["speedup"]) for d in document["devices"] for r in d["rows"])


def test_every_pass_kind_is_profiled():
    assert PASSES == ("decode", "verify", "draft")


def test_shape_checkpoint_loads_as_a_checkpoint(test_shape, tmp_path):
    from orthrus.models import load_causal_lm

    directory = shapes.write_shape_checkpoint(test_shape, tmp_path / "ckpt", "cpu", "bfloat16")
    model = load_causal_lm(str(directory), dtype="bfloat16")
    assert shapes.model_shape(model.config)["name"] == test_shape
    assert shapes.spec_shape(str(directory))["name"] == test_shape


def test_profile_command_unknown_shape_exit_2(capsys):
    from orthrus.cli import main

    assert main(["profile", "--model", "qwen3-shape:3b", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown model shape 'qwen3-shape:3b'" in err


def test_profile_command_writes_a_profile(test_shape, tmp_path):
    from orthrus.cli import main

    out = tmp_path / "p.json"
    args = ["profile", "--model", test_shape, "--contexts", "8,16", "--blocks", "1,2", "--repeats", "1", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    assert LatencyProfile.load(out).model["spec"] == test_shape


def test_profile_command_saves_the_profiled_weights_as_a_checkpoint(test_shape, tmp_path, capsys):
    from orthrus.cli import main
    from orthrus.models import load_causal_lm

    args = ["profile", "--model", test_shape, "--contexts", "8", "--blocks", "1,2", "--repeats", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "p.json"), "--save-checkpoint", str(tmp_path / "ckpt")]) == 0
    saved = load_causal_lm(str(tmp_path / "ckpt"), dtype="float32")
    built = shapes.build_shape_model(test_shape, "cpu", torch.float32)  # seeded: the very weights profiled
    assert saved.state_dict().keys() == built.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), built.state_dict().values()))
    capsys.readouterr()
    assert main([*args, "--model", "tiny-orthrus", "--save-checkpoint", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--save-checkpoint is for qwen3-shape models" in err


def test_profiles_have_batch_size_as_an_axis_and_block_size_auto_reads_it(test_shape, tmp_path):
    """block_size: auto costs a cycle at the batch size at hand: a profile times every batch size it is
    asked for (every row at the context), and the chooser reads the nearest one."""
    from orthrus.engines.block_choice import profile_cost, read_profile

    model = shapes.load_model(test_shape, "cpu", "float32")
    profile = measure_profile(model, test_shape, contexts=[16], blocks=[1, 4], repeats=1, warmup=0, warm_in=0, batches=[1, 3])
    assert {(t.kind, t.batch) for t in profile.timings} >= {("ar_step", 1), ("ar_step", 3), ("orthrus_cycle", 3)}
    assert profile.time_ms("decode", 16, batch=3) > 0 and profile.settings["batches"] == [1, 3]
    path = profile.save(tmp_path / "p.json")
    data = read_profile(path, model.config, "cpu", "float32")
    three = next(t.median_ms for t in profile.timings if (t.kind, t.block, t.batch) == ("orthrus_cycle", 4, 3))
    assert profile_cost(data, 3, 16, 4) == pytest.approx(three / 1e3)
    assert profile_cost(data, 6, 16, 4) == pytest.approx(2 * three / 1e3)  # beyond the largest: linear in rows
