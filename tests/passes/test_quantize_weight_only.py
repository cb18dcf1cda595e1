"""quantize{mode=weight-only}: MatMulNBits and GatherBlockQuantized through ORT, on small inline models."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit.errors import SpecError
from onnxkit.modelio import to_proto
from onnxkit.passes.quantize import weight_only
from onnxkit.passes.quantize.cpu import features_from_flags
from onnxkit.pipeline import Pipeline


def embedding_mlp(layers: int = 1, opset: int = 17) -> onnx.ModelProto:
    """ids[N,8] → Gather(table[200,64]) → MatMul[64,128] (→ Relu → MatMul[128,32]) → y: an embedding and one
    or two layers, the shape of a transformer's weight-heavy parts. Gaussian weights lose about 20 dB to
    4-bit blocks per layer, so one layer meets cosine 0.99 at 4 bits and two do not."""
    rng = np.random.default_rng(0)
    weights = {
        "table": rng.standard_normal((200, 64)),
        "w1": rng.standard_normal((64, 128)) / 8,
        "w2": rng.standard_normal((128, 32)) / 11,
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    if layers == 1:
        nodes[1].output[0] = "y"
        nodes, weights = nodes[:2], {k: w for k, w in weights.items() if k != "w2"}
    graph = helper.make_graph(
        nodes,
        "embedding_mlp",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, None])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def samples(count: int = 10) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"ids": rng.integers(0, 200, (2, 8), dtype=np.int64)} for _ in range(count)]


def quantize(spec: str, model: onnx.ModelProto | None = None):
    result = Pipeline.parse(spec).run(model or embedding_mlp(), data=samples())
    return result, result.report.passes[0]


def test_int4_rewrites_matmuls_and_the_embedding_table_at_opset_21_within_the_target():
    result, report = quantize("quantize{mode=weight-only,max_slowdown=none}")
    assert report.status == "ok", report.stats
    proto = to_proto(result.model)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["MatMulNBits"] == 1 and ops["GatherBlockQuantized"] == 1 and "MatMul" not in ops
    assert next(o.version for o in proto.opset_import if o.domain == "") == 21
    levels = {
        a.i for n in proto.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"
    }
    assert levels == {weight_only.accuracy_level_for(weight_only.detect_cpu())[0]}
    details = report.details
    assert details["size"]["ratio"] < 0.35  # 4-bit weights, scales and zero points in blocks of 32
    assert details["chosen"]["passed"] and details["eight_bit"] == []
    assert any("latency" in line for line in report.stats)


def test_a_target_int4_cannot_meet_moves_the_most_sensitive_matmuls_to_8_bits():
    _, report = quantize("quantize{mode=weight-only,max_slowdown=none}", embedding_mlp(layers=2))
    assert report.status == "ok", report.stats
    details = report.details
    assert details["tries"][0]["eight_bit"] == 0 and not details["tries"][0]["passed"]  # INT4 everywhere missed
    assert details["eight_bit"] and details["chosen"]["passed"], details
    assert details["chosen"]["eight_bit"] == len(details["eight_bit"])
    assert details["quantized_nodes"]["MatMul → 8-bit MatMulNBits"] == len(details["eight_bit"])
    assert sum(details["quantized_nodes"].values()) == 3


def test_the_verdict_is_the_worst_sample_of_all_the_data_in_a_users_session():
    """Weight-only calibrates nothing, so every sample judges (not the pipeline's held-out fifth), in a session
    with ORT's defaults as users run the model: the cosine the pass reports is the worst a user measures."""
    from onnxkit.passes.quantize.runtime import make_session

    result, report = quantize("quantize{mode=weight-only,max_slowdown=none}", embedding_mlp(layers=2))
    chosen = report.details["chosen"]
    assert chosen["summary"].startswith(f"every sample: {len(samples())} samples, cosine ")
    judged = chosen["min_cosine"]
    reference, quantized = make_session(embedding_mlp(layers=2)), make_session(to_proto(result.model))
    cosines = []
    for sample in samples():
        expected, got = reference.run(None, sample)[0].ravel(), quantized.run(None, sample)[0].ravel()
        cosines.append(float(np.dot(expected, got) / (np.linalg.norm(expected) * np.linalg.norm(got))))
    assert judged == pytest.approx(min(cosines), abs=1e-5) and judged >= 0.99


def test_the_report_names_the_model_it_returns_when_the_bisection_ends_on_a_failure(monkeypatch):
    """Two MatMuls and a table: INT4 everywhere fails, all three up (MatMuls at 8 bits, table float) passes, then
    the bisection tries one and two of them up, which fail: the pass returns the all-up model, and its report
    must say that one met the target."""
    from onnxkit.passes.quantize.float_search import Verdict
    from onnxkit.passes.quantize.judge import Judge

    def everything_up(candidate: onnx.ModelProto) -> Verdict:
        count = sum(
            1
            for n in candidate.graph.node
            if n.op_type == "MatMulNBits"
            for a in n.attribute
            if a.name == "bits" and a.i == 8
        )
        table_float = all(n.op_type != "GatherBlockQuantized" for n in candidate.graph.node)
        return Verdict(count == 2 and table_float, {"8-bit MatMuls": float(count)})

    monkeypatch.setattr(weight_only, "_judge", lambda *args: Judge("everything up", everything_up, everything_up))
    result, report = quantize("quantize{mode=weight-only,max_slowdown=none}", embedding_mlp(layers=2))
    details = report.details
    assert [t["passed"] for t in details["tries"]] == [False, True, False, False]
    assert details["chosen"] == details["tries"][1]
    assert len(details["eight_bit"]) == 2 and details["float_tables"] == ["embed"]
    assert any(line.startswith("target everything up met (8-bit MatMuls 2.0000") for line in report.stats)
    assert everything_up(to_proto(result.model)).passed


def test_a_model_that_meets_the_target_only_without_the_headroom_is_kept_with_a_warning(monkeypatch):
    """The search aims for HEADROOM of the noise the target allows; where no candidate gets there (here none can:
    a headroom of nothing), the first that meets the target itself is the result, and the report says so."""
    monkeypatch.setattr(weight_only, "HEADROOM", 0.0)
    _, report = quantize("quantize{mode=weight-only,max_slowdown=none}")
    details = report.details
    first = details["tries"][0]
    assert (first["passed"], first["headroom"]) == (True, False)
    assert len(details["tries"]) > 1  # it looked further (nodes up, then fp32 compute) before settling
    assert details["chosen"] == details["tries"][0] and details["eight_bit"] == [] and report.modified
    assert any("without the headroom" in line for line in report.stats)


def test_the_mix_ranks_each_node_by_what_its_4_bit_weights_alone_do_to_the_outputs():
    """The switchboard's noise for a node is the output noise of the model with that node alone quantized by
    ORT (measured, not estimated from the node's own output), and the order is noise per byte saved."""
    import types

    from onnxkit.passes.quantize import weight_only_mix, weight_only_rewrite
    from onnxkit.passes.quantize.runtime import make_session

    model = embedding_mlp(layers=2, opset=21)
    data = samples(4)
    options = types.SimpleNamespace(bits=4, block=32, algo="rtn")
    level = weight_only.INT8_COMPUTE
    every_node = weight_only_rewrite.quantize_nbits(model, options, level, ["MatMul", "Gather"], set(), set())
    ranked = weight_only_mix.rank(model, every_node, data, bits=4)
    assert sorted(n.node for n in ranked) == ["embed", "fc1", "fc2"]
    assert [n.noise_per_byte for n in ranked] == sorted((n.noise_per_byte for n in ranked), reverse=True)

    reference = make_session(model)
    for node in ranked:
        others = {"embed", "fc1", "fc2"} - {node.node}
        alone = make_session(
            weight_only_rewrite.quantize_nbits(model, options, level, ["MatMul", "Gather"], others, set())
        )
        ratios = []
        for sample in data:
            expected, got = reference.run(None, sample)[0], alone.run(None, sample)[0]
            ratios.append(float(np.square(got - expected).sum() / np.square(expected).sum()))
        assert node.noise == pytest.approx(np.mean(ratios), rel=1e-3), node
    assert next(n for n in ranked if n.node == "embed").bytes_saved == 200 * 64 * 4 - 200 * 64 // 2

    # A budget too small for one run per node and sample measures on the first sample alone.
    first_only = {n.node: n.noise for n in weight_only_mix.rank(model, every_node, data[:1], bits=4)}
    hurried = {n.node: n.noise for n in weight_only_mix.rank(model, every_node, data, bits=4, budget_s=1e-9)}
    assert hurried == pytest.approx(first_only) and hurried != pytest.approx({n.node: n.noise for n in ranked})


def test_8_bit_leaves_the_table_float_and_says_so():
    result, report = quantize("quantize{mode=weight-only,bits=8,max_slowdown=none}", embedding_mlp(layers=2))
    ops = Counter(n.op_type for n in to_proto(result.model).graph.node)
    assert ops["MatMulNBits"] == 2 and ops["Gather"] == 1
    assert any("4 bits only" in line for line in report.stats)


def test_the_latency_gate_keeps_float_when_weight_only_is_slower_than_allowed():
    result, report = quantize("quantize{mode=weight-only,max_slowdown=0.001}")
    assert not report.modified
    assert any("slower than allowed" in line and "max_slowdown=none" in line for line in report.stats)
    assert "MatMulNBits" not in {n.op_type for n in to_proto(result.model).graph.node}


def test_the_latency_gate_fails_the_pass_when_asked_to_refuse():
    """`onnxkit passes` and the README promise on_slow=refuse fails instead of keeping float."""
    from onnxkit.errors import PassFailedError
    from onnxkit.pass_base import PassContext
    from onnxkit.passes.quantize import QuantizePass

    pass_ = QuantizePass(mode="weight-only", max_slowdown=0.001, on_slow="refuse")
    pass_.context = PassContext(data=samples())
    with pytest.raises(PassFailedError, match="weight-only is slower than allowed"):
        pass_(ir.serde.deserialize_model(embedding_mlp()))


@pytest.mark.parametrize(
    "options, message",
    [("bits=3", "bits must be one of"), ("block=48", "block must be"), ("algo=hqq,bits=8", "4 bits only")],
)
def test_bad_weight_only_options_are_spec_errors(options, message):
    with pytest.raises(SpecError, match=message):
        Pipeline.parse(f"quantize{{mode=weight-only,{options}}}")


@pytest.mark.parametrize(
    "machine, flags, level",
    [
        ("x86_64", "avx2 avx512f avx512_vnni", 4),
        ("x86_64", "avx2", 4),
        ("x86_64", "sse4_2", 1),
        ("aarch64", "asimd", 4),
    ],
)
def test_accuracy_level_follows_the_cpu(machine, flags, level):
    assert weight_only.accuracy_level_for(features_from_flags(machine, frozenset(flags.split())))[0] == level


@pytest.mark.slow  # exports MiniLM with real weights and searches its INT4/INT8 mix: about a minute
def test_minilm_int4_with_its_embedding_table_is_a_third_of_fp32_at_cosine_0_99_on_sentences_it_never_saw(tmp_path):
    """The pass is given half the sentences; the model it returns meets cosine 0.99 on the other half too, in a
    session as users run it (ORT's defaults, weights prepacked: MatMulNBits at its accuracy_level)."""
    from benchmarks.minilm import export_minilm
    from onnxkit.parity import compare_models

    minilm = export_minilm(tmp_path)
    given, unseen = minilm.samples[0::2], minilm.samples[1::2]
    result = Pipeline.parse("quantize{mode=weight-only}").run(str(minilm.path), data=given)
    report = result.report.passes[0]
    assert report.status == "ok" and report.modified, report.stats
    nodes = report.details["quantized_nodes"]
    assert nodes["Gather → 4-bit GatherBlockQuantized"] >= 1  # the word embedding table, 30522 × 384
    assert nodes.get("MatMul → 4-bit MatMulNBits", 0) >= 18  # the measured order keeps most at 4 bits
    assert report.details["chosen"]["headroom"], report.details["tries"]
    quantized = tmp_path / "minilm.int4.onnx"
    result.save(quantized)
    assert quantized.stat().st_size <= 0.35 * minilm.path.stat().st_size
    parity = compare_models(minilm.path, quantized, unseen, tolerance={"atol": None, "rtol": None, "min_cosine": 0.99})
    assert parity.passed, parity.summary()


@pytest.mark.slow  # trains a 2-layer Llama decoder for 120 steps and exports it: about 20 s on a busy machine
def test_a_small_trained_decoder_int4_keeps_its_next_token_logits(tmp_path):
    """A decoder built from a transformers config (benchmarks.decoder), exported with a logits output: every
    weight MatMul becomes MatMulNBits, the embedding table GatherBlockQuantized, the attention products (two
    activations) stay MatMul; the file shrinks to about a fifth and held-out logits keep the target."""
    pytest.importorskip("transformers")
    from benchmarks.decoder import DecoderShape, build_decoder
    from onnxkit.passes.quantize.runtime import make_session

    decoder = build_decoder(tmp_path, DecoderShape.tiny(), samples=16)
    float_model = onnx.load(str(decoder.path))
    weights = {t.name for t in float_model.graph.initializer}
    float_ops = Counter(n.op_type for n in float_model.graph.node)
    weight_matmuls = sum(n.op_type == "MatMul" and n.input[1] in weights for n in float_model.graph.node)
    assert weight_matmuls == 7 * 2 + 1  # q, k, v, o, gate, up, down per layer, and the LM head

    # The latency gate is another test's subject: a 64-wide model may well run faster in float.
    result = Pipeline.parse("quantize{mode=weight-only,max_slowdown=none}").run(str(decoder.path), data=decoder.samples)
    report = result.report.passes[0]
    assert report.status == "ok" and report.modified, report.stats
    assert report.details["chosen"]["passed"], report.details["tries"]
    quantized_path = tmp_path / "decoder.int4.onnx"
    result.save(quantized_path)
    onnx.checker.check_model(str(quantized_path), full_check=True)
    quantized = onnx.load(str(quantized_path))
    ops = Counter(n.op_type for n in quantized.graph.node)
    assert ops["MatMulNBits"] == weight_matmuls and ops["GatherBlockQuantized"] == 1
    assert ops["MatMul"] == float_ops["MatMul"] - weight_matmuls  # Q·Kᵀ and scores·V in each layer
    assert quantized_path.stat().st_size < 0.3 * decoder.path.stat().st_size

    scores = decoder.scores(make_session(quantized))  # real ORT sessions on held-out text, against FP32's logits
    assert scores["cosine_min"] >= 0.99 and scores["top1_agreement"] >= 0.9, scores
    assert scores["next_token_loss"] < decoder.training["held_out_loss"] + 0.1, (scores, decoder.training)


def test_a_model_past_the_protobuf_limit_is_read_from_its_external_data(monkeypatch, tmp_path):
    """Simulated as quantize's INT8 test does: onnxkit treats anything over 1 KB as too large for one protobuf,
    so the model is loaded lazily and every session goes through files."""
    from onnxkit import modelio
    from onnxkit.pass_base import PassContext
    from onnxkit.passes.quantize import QuantizePass

    path = tmp_path / "model" / "embedding_mlp.onnx"
    path.parent.mkdir()
    onnx.save_model(embedding_mlp(), str(path), save_as_external_data=True, location="weights.data", size_threshold=0)
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 1024)
    monkeypatch.chdir(tmp_path)  # not the model's folder
    float_model = modelio.load_model(path)
    before = to_proto(float_model).SerializeToString()
    pass_ = QuantizePass(mode="weight-only", max_slowdown=None)
    pass_.context = PassContext(data=samples())
    result = pass_(float_model)
    assert result.modified, result.stats
    ops = Counter(n.op_type for n in to_proto(result.model).graph.node)
    assert ops["MatMulNBits"] == 1 and ops["GatherBlockQuantized"] == 1
    assert result.details["size"]["ratio"] < 0.35
    assert to_proto(float_model).SerializeToString() == before  # the input model is left alone


def test_the_weight_only_results_section_is_rendered_from_its_json_and_survives_the_main_suite(tmp_path):
    """RESULTS.md's weight-only block is generated (`python -m benchmarks.weight_only --report-only`), never edited:
    the published page holds exactly what the committed JSON renders, and the main suite's rewrite keeps it."""
    import json

    from benchmarks import weight_only
    from benchmarks.real import render

    results = json.loads(weight_only.DEFAULT_OUT.read_text())
    section = "\n".join(weight_only.section_lines(results))
    published = render.RESULTS_MD.read_text()
    assert render.replace_section(published, section, weight_only.SECTION) == published
    for model in ("### MiniLM-L6", "### Small decoder"):
        assert model in section
    assert section.count("| onnxkit quantize{mode=weight-only} |") == 2
    assert section.count("- onnxkit's default against ort block 32, level 4: size") == 2

    page = tmp_path / "RESULTS.md"
    page.write_text("# results\n")
    weight_only.publish(results, page)
    weight_only.publish(results, page)
    rewritten = render.carry_section(page, "# results\n\n## Headline\nnew\n")
    assert rewritten.count("## Weight-only quantization") == 1 and "## Headline\nnew" in rewritten


def test_the_passes_listing_states_the_weight_only_gate_and_target_with_their_reasons():
    from click.testing import CliRunner

    from onnxkit.cli import main

    result = CliRunner().invoke(main, ["passes"])
    assert result.exit_code == 0, result.output
    listing = " ".join(result.output.split())
    assert (
        "weight-only latency gate: max_slowdown, default 1.0 as for INT8: people pick weight-only mostly for memory"
        in (listing)
    )
    assert "max_slowdown=none keeps the smaller model whatever its speed" in listing
    assert (
        f"at most {weight_only.HEADROOM:.0%} of what the target allows, headroom for inputs beyond the data" in listing
    )


def test_the_search_first_probes_the_prefix_the_measured_noises_predict():
    """Noises 3, 2, 1 (a sixth of the total left at 4 bits after two go up); judged excess 3.2 with none up and
    0.2 with all up: two up leave 0.2 + 3.0 / 6 = 0.7 of the allowance, within the 0.8 headroom, one up 1.7."""
    assert weight_only._predicted_prefix([3.0, 2.0, 1.0], 3.2, 0.2) == 2
    assert weight_only._predicted_prefix([3.0, 2.0, 1.0], 30.0, 0.2) == 3
    assert weight_only._predicted_prefix([3.0, 2.0, 1.0], None, 0.2) is None  # a top-1 or metric target
    assert weight_only._predicted_prefix([3.0, float("inf")], 3.2, 0.2) is None  # a node it could not measure
