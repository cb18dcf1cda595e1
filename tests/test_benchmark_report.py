"""The suite's quantization table: nodes kept in float, counted the same way on onnxkit's and ORT's outputs (real
quantizers on small inline models), and RESULTS.md rendered from a real bench run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import measure, quant_compare, report
from onnxkit import external_tools
from onnxkit.bench import run_bench
from onnxkit.pass_base import PassContext
from onnxkit.passes.quantize import QuantizePass
from tests.passes import test_quantize as quantize_tests


def convnet() -> onnx.ModelProto:
    """test_quantize's convnet (Conv → Relu → Conv → Relu → GlobalAveragePool → Flatten → Gemm), and a
    Shape → Gather beside it (an integer Gather, no candidate)."""
    model = quantize_tests.convnet()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"))
    model.graph.node.extend(
        [
            helper.make_node("Shape", ["x"], ["shape"], name="shape"),
            helper.make_node("Gather", ["shape", "zero"], ["batch"], name="batch_size"),
        ]
    )
    model.graph.output.append(helper.make_tensor_value_info("batch", TensorProto.INT64, []))
    return model


def samples(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def run_quantize_pass(model: onnx.ModelProto, **options: object) -> tuple[dict, onnx.ModelProto]:
    """The quantize pass alone, gate and target off: its report's details and its output model."""
    pass_ = QuantizePass(calib="minmax", target_cosine=None, max_slowdown=None, **options)
    pass_.context = PassContext(data=samples(8))
    result = pass_(ir.serde.deserialize_model(model))
    return result.details, ir.serde.serialize_model(result.model)


def test_static_count_agrees_with_the_pass_report_and_reads_ort_alike(tmp_path: Path) -> None:
    details, quantized = run_quantize_pass(convnet(), mode="static", exclude=("conv2", "fc"))
    counted = quant_compare.float_nodes(quantized, "static")
    # What the pass kept in float, read off its output graph alone, and relu2 with it: it reads the float conv2's
    # output, so it runs in float too, though the pass lists only the nodes it decided on.
    assert set(details["kept_float"]) == {"conv2", "fc"}
    assert sorted(counted["kept_float"]) == ["conv2", "fc", "relu2"]
    assert counted["int8"] == 2  # conv1 (relu1 folded into its output range) and the pool
    assert "batch_size" not in counted["kept_float"]  # a Gather on a shape is no candidate

    # ORT's quantize_static, as the suite's peer runs it, on the same model: everything it quantizes is INT8.
    source, output = tmp_path / "convnet.onnx", tmp_path / "ort.onnx"
    onnx.save(convnet(), source)
    external_tools.run_ort_quantize(str(source), str(output), "static", samples=samples(8))
    counted_ort = quant_compare.float_nodes(output, "static")
    assert counted_ort["kept_float"] == [] and counted_ort["int8"] >= 4  # 2 Conv, the pool and the Gemm at least


def test_dynamic_count_agrees_with_the_pass_report(tmp_path: Path) -> None:
    details, quantized = run_quantize_pass(convnet(), mode="dynamic", exclude=())
    counted = quant_compare.float_nodes(quantized, "dynamic")
    assert counted == {"kept_float": [], "int8": 1}  # the Gemm, as a MatMul; Conv is no candidate in dynamic mode
    assert details["quantized_nodes"] == {"MatMul": 1}

    source, output = tmp_path / "convnet.onnx", tmp_path / "ort.onnx"
    onnx.save(convnet(), source)
    external_tools.run_ort_quantize(str(source), str(output), "dynamic")
    ort = onnx.load(str(output))
    assert {n.op_type for n in ort.graph.node} >= {"ConvInteger", "MatMulInteger"}
    assert quant_compare.float_nodes(ort, "dynamic") == {"kept_float": [], "int8": 1}  # ConvInteger counted in neither
    # The float model, read the same way: every candidate is float.
    assert quant_compare.float_nodes(convnet(), "dynamic") == {"kept_float": ["fc"], "int8": 0}
    with pytest.raises(ValueError, match="static or dynamic"):
        quant_compare.float_nodes(convnet(), "weight-only")


PUBLISHED = Path(__file__).resolve().parents[1] / "benchmarks" / "results.json"


@pytest.fixture(scope="module")
def published() -> dict:
    """The suite's published results: real figures, read by the renderer as ``--report-only`` reads them."""
    return json.loads(PUBLISHED.read_text())


def check_rows_match_records(entry: dict, rows: list[list[str]]) -> None:
    """Each row's cells are its records' figures: onnxkit's pipeline first, ORT's quantizer after the slash."""
    tools = {t["label"]: t for t in entry["report"]["tools"]}
    for row in rows:
        mode = row[1]
        mine = next(t for t in tools.values() if t["runner"] == "onnxkit" and t["klass"] == mode)
        theirs = tools[f"ort-quantize-{mode}"]
        if mine["ok"] and theirs["ok"]:
            ratio = mine["transform_seconds"] / theirs["transform_seconds"]
            assert row[2].endswith(f" ({ratio:.1f}×)"), row
            assert row[4].startswith(f"{mine['parity']['min_cosine']:.4f} / {theirs['parity']['min_cosine']:.4f}")
            b1 = mine["ratios"]["vs_original"]["latency"]["b1-t1"]
            assert row[5].startswith(f"{b1:.2f}× · ")
            assert f"({mine['ratios']['vs_original']['file_bytes']:.2f}×) / " in row[6]
        counts = entry.get("float_nodes", {})
        for cell, record in zip(row[3].split(" / "), (mine, theirs)):
            if record["label"] in counts and record["ok"]:
                kept = counts[record["label"]]
                assert cell == f"{len(kept['kept_float'])} of {len(kept['kept_float']) + kept['int8']}"
            else:
                assert cell == "—"  # not counted is unknown, never zero


def test_quantization_table_renders_the_published_results(published: dict, tmp_path: Path) -> None:
    measured = [entry for entry in published["models"] if "report" in entry]
    assert measured
    for entry in measured:
        rows, notes = quant_compare.comparison_rows([entry])
        assert [row[:2] for row in rows] == [[entry["name"], "static"], [entry["name"], "dynamic"]]
        check_rows_match_records(entry, rows)
        for tool in entry["report"]["tools"]:  # where onnxkit handed on the float model, a note says why
            said = [n.split("kept the float model: ", 1)[1] for n in tool["notes"] if "kept the float model: " in n]
            if tool["runner"] == "onnxkit" and said and tool["ok"]:
                why = f"{entry['name']} / {tool['klass']}: onnxkit kept the float model: {said[0].split('; ')[0]}"
                assert why in notes

    page = tmp_path / "RESULTS.md"
    page.write_text("old\n<!-- weight-only:start -->\n## Weight-only quantization\nkept\n<!-- weight-only:end -->\n")
    report.write_markdown(published, page, [])
    text = page.read_text()
    table = text.split("## Quantization beside ORT's quantizers", 1)[1].split("## Known gaps", 1)[0]
    assert "| model | mode | transform | kept in float | cosine | latency × FP32 | size |" in table
    rows, _ = quant_compare.comparison_rows(measured)
    assert all("| " + " | ".join(row) + " |" in table for row in rows)
    assert "(#weight-only-quantization)" in table and "## Weight-only quantization\nkept" in text  # block kept


def test_a_quant_only_rerun_replaces_only_the_quantizing_rows(published: dict) -> None:
    old = next(entry for entry in published["models"] if "report" in entry)
    old = {k: v for k, v in old.items() if k not in ("float_nodes", "quant_rerun", "quant_machine")}
    rows, notes = quant_compare.comparison_rows([old])
    assert [row[3] for row in rows] == ["— / —", "— / —"]  # not counted: shown as unknown, not as zero
    assert f"python -m benchmarks --quant-only --model {old['name']}`" in notes[-1]

    # A rerun's entry: the original and the quantizing rows only, each with figures of its own.
    tools = [
        {**t, "transform_seconds": (t["transform_seconds"] or 0) + 1, "notes": ["rerun"]}
        for t in old["report"]["tools"]
        if t["klass"] not in ("exact",)
    ]
    counts = {t["label"]: {"kept_float": ["a"], "int8": 3} for t in tools if t["klass"] in ("static", "dynamic")}
    machine = {**old["report"]["machine"], "cpu": "Other CPU", "int8": "AVX2, AVX-512, VNNI"}
    rerun = {**old, "report": {**old["report"], "tools": tools, "machine": machine}, "float_nodes": counts}
    rerun["seconds"] = 42.0

    merged = measure.merge_quant_rows(old, rerun, "2026-11-30 22:30 UTC")
    kept = {t["label"]: t for t in merged["report"]["tools"]}
    for tool in old["report"]["tools"]:
        expected = (
            tool if tool["klass"] in ("exact", "reference") else next(t for t in tools if t["label"] == tool["label"])
        )
        assert kept[tool["label"]] == expected
    assert merged["float_nodes"] == counts
    assert merged["report"]["notes"][-1].startswith("quantization rows re-measured 2026-11-30 22:30 UTC")
    assert "in 42 s on Other CPU (AVX2, AVX-512, VNNI)" in merged["report"]["notes"][-1]
    rows, notes = quant_compare.comparison_rows([merged])
    assert [row[3] for row in rows] == ["1 of 4 / 1 of 4", "1 of 4 / 1 of 4"]
    lines = report._machine_lines(old["report"]["machine"], [merged])
    assert (
        lines[-1]
        == f"- quantization rows of {old['name']} re-measured on: Other CPU, {machine['cores']} cores visible; AVX2, AVX-512, VNNI"
    )


@pytest.mark.slow
def test_quant_only_bench_counts_float_nodes_on_the_real_outputs(tmp_path: Path) -> None:
    """``bench_model(quant_only=True)``'s path on a small model: the quantizing pipelines and ORT's quantizers run
    for real, their outputs' float nodes are counted, and the table renders them."""
    source = tmp_path / "convnet.onnx"
    onnx.save(convnet(), source)
    np.savez(tmp_path / "data.npz", x=np.concatenate([s["x"] for s in samples(20)]))
    work = tmp_path / "work"
    bench = run_bench(
        source,
        list(measure.QUANTIZE_PIPELINES),
        data=tmp_path / "data.npz",
        peers=list(measure.QUANTIZE_PEERS),
        batch_sizes=[1, 4],
        threads=[1],
        repeats=2,
        warmup=0,
        min_seconds=0,
        workdir=work,
    )
    assert [t.label for t in bench.tools][3:] == ["ort-quantize-dynamic", "ort-quantize-static"]
    outputs = {r.label: work / f"{i:02d}-{r.runner}.onnx" for i, r in enumerate(bench.tools[1:])}
    counts = quant_compare.count_outputs(bench, outputs)
    assert set(counts) == {t.label for t in bench.tools[1:]}
    assert counts["ort-quantize-static"]["kept_float"] == [] and counts["ort-quantize-static"]["int8"] >= 4
    entry = {"name": "convnet", "description": "", "report": bench.to_dict(), "float_nodes": counts}
    rows, notes = quant_compare.comparison_rows([entry])
    check_rows_match_records(entry, rows)
    assert all(": onnxkit kept the float model: " in note for note in notes)  # no failure, no uncounted row
