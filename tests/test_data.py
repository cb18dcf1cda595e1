"""onnxkit.data: adapters, re-iteration, batching, validation, synthetic inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import data
from onnxkit.data import (
    FolderDataset,
    ImageFolderDataset,
    ImagePreprocess,
    NpzDataset,
    OnnxTestDataset,
    SyntheticDataset,
    TorchDataset,
    load_dataset,
    validate_sample,
)
from onnxkit.errors import DataError


def model_with_inputs(
    *inputs: tuple[str, int, list], nodes: list | None = None, initializers: list | None = None
) -> onnx.ModelProto:
    """A model taking ``inputs`` (name, elem type, shape) whose outputs are the inputs themselves."""
    nodes = nodes or [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in inputs]
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, None) for node in nodes for out in node.output]
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info(*i) for i in inputs], outputs, initializers or []
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


IMAGE_MODEL = model_with_inputs(("x", TensorProto.FLOAT, ["batch", 3, 4, 4]))
TWO_INPUTS = model_with_inputs(
    ("ids", TensorProto.INT64, ["batch", "seq"]), ("mask", TensorProto.INT64, ["batch", "seq"])
)


def as_list(dataset) -> list[dict[str, np.ndarray]]:
    return [{k: np.array(v) for k, v in sample.items()} for sample in dataset]


def assert_same_samples(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def assert_reiterable(dataset) -> list[dict]:
    first = as_list(dataset)
    assert_same_samples(first, as_list(dataset))
    return first


# ---------------------------------------------------------------------------------------------------------
# .npz and folders


def test_npz_first_axis_stacks_samples_when_it_has_one_axis_more_than_the_model(tmp_path, rng) -> None:
    stacked = rng.standard_normal((5, 1, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "stacked.npz", x=stacked)
    dataset = NpzDataset(tmp_path / "stacked.npz").for_model(IMAGE_MODEL)
    samples = assert_reiterable(dataset)
    assert len(dataset) == 5 and len(samples) == 5
    np.testing.assert_array_equal(samples[2]["x"], stacked[2])

    one_batch = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "batch.npz", x=one_batch)
    # The model's own rank with a dynamic batch axis: each row is a sample of batch 1.
    dataset = NpzDataset(tmp_path / "batch.npz").for_model(IMAGE_MODEL)
    rows = assert_reiterable(dataset)
    assert len(dataset) == 5 and [r["x"].shape for r in rows] == [(1, 3, 4, 4)] * 5
    np.testing.assert_array_equal(np.concatenate([r["x"] for r in rows]), one_batch)
    # Asked for explicitly, or with a static batch axis, the file is one sample: a batch of 5.
    (sample,) = assert_reiterable(NpzDataset(tmp_path / "batch.npz", layout="batch").for_model(IMAGE_MODEL))
    np.testing.assert_array_equal(sample["x"], one_batch)
    static_batch = model_with_inputs(("x", TensorProto.FLOAT, [5, 3, 4, 4]))
    assert len(NpzDataset(tmp_path / "batch.npz").for_model(static_batch)) == 1
    # Without the model, the first axis indexes samples.
    assert len(NpzDataset(tmp_path / "batch.npz")) == 5
    assert len(NpzDataset(tmp_path / "batch.npz", layout="batch")) == 1


def test_npz_batch_size_regroups_rows_in_order(tmp_path, rng) -> None:
    rows = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "batch.npz", x=rows)
    batches = assert_reiterable(NpzDataset(tmp_path / "batch.npz", batch_size=2).for_model(IMAGE_MODEL))
    assert [b["x"].shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), rows)
    stacked = rows[:, None]  # five samples of batch 1
    np.savez(tmp_path / "stacked.npz", x=stacked)
    regrouped = as_list(data.rebatch(NpzDataset(tmp_path / "stacked.npz").for_model(IMAGE_MODEL), 4))
    assert [b["x"].shape for b in regrouped] == [(4, 3, 4, 4), (1, 3, 4, 4)]


def test_npz_errors_name_the_input(tmp_path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match="input 'x' has shape \\(2, 3\\) but the model takes rank 4"):
        list(NpzDataset(tmp_path / "bad.npz").for_model(IMAGE_MODEL))
    np.savez(tmp_path / "uneven.npz", ids=np.zeros((3, 1, 4), np.int64), mask=np.zeros((2, 1, 4), np.int64))
    with pytest.raises(DataError, match="different numbers of samples"):
        list(NpzDataset(tmp_path / "uneven.npz").for_model(TWO_INPUTS))
    objects = np.empty((1, 3, 4, 4), dtype=object)
    objects[0, 0, 0, 0] = {"a": 1}
    np.save(tmp_path / "objects.npy", objects)
    with pytest.raises(DataError, match="pickle"):
        list(load_dataset(tmp_path / "objects.npy").for_model(IMAGE_MODEL))


def test_folder_of_npz_npy_and_per_sample_subfolders(tmp_path, rng) -> None:
    images = [rng.standard_normal((1, 3, 4, 4)).astype(np.float32) for _ in range(3)]
    npy_folder = tmp_path / "npy"
    npy_folder.mkdir()
    for i, image in enumerate(images):
        np.save(npy_folder / f"img_{i * 5}.npy", image)  # img_0, img_5, img_10: natural order
    dataset = load_dataset(npy_folder).for_model(IMAGE_MODEL)
    assert isinstance(dataset, FolderDataset) and len(dataset) == 3
    samples = assert_reiterable(dataset)
    for sample, image in zip(samples, images):
        np.testing.assert_array_equal(sample["x"], image)
    with pytest.raises(DataError, match="single-input model"):
        list(FolderDataset(npy_folder).for_model(TWO_INPUTS))

    sample_folders = tmp_path / "per_sample"
    for i in range(2):
        (sample_folders / f"s{i}").mkdir(parents=True)
        np.save(sample_folders / f"s{i}" / "ids.npy", np.full((1, 4), i, np.int64))
        np.save(sample_folders / f"s{i}" / "mask.npy", np.ones((1, 4), np.int64))
    np.savez(sample_folders / "s2.npz", ids=np.full((1, 4), 2, np.int64), mask=np.ones((1, 4), np.int64))
    samples = assert_reiterable(load_dataset(sample_folders).for_model(TWO_INPUTS))
    assert [int(s["ids"][0, 0]) for s in samples] == [0, 1, 2]
    assert all(validate_sample(s, TWO_INPUTS) for s in samples)


def test_onnx_test_layout_names_by_tensor_name_or_position(tmp_path) -> None:
    for i in range(2):
        folder = tmp_path / f"test_data_set_{i}"
        folder.mkdir()
        ids = numpy_helper.from_array(np.full((1, 3), i, np.int64), "ids")
        mask = numpy_helper.from_array(np.ones((1, 3), np.int64))  # nameless: named by position
        (folder / "input_0.pb").write_bytes(ids.SerializeToString())
        (folder / "input_1.pb").write_bytes(mask.SerializeToString())
        (folder / "output_0.pb").write_bytes(numpy_helper.from_array(np.full((1, 3), i, np.int64)).SerializeToString())
    dataset = load_dataset(tmp_path)
    assert isinstance(dataset, OnnxTestDataset) and len(dataset) == 2
    with pytest.raises(DataError, match="no tensor name"):
        list(dataset)
    bound = dataset.for_model(TWO_INPUTS)
    samples = assert_reiterable(bound)
    assert [sorted(s) for s in samples] == [["ids", "mask"]] * 2
    assert int(samples[1]["ids"][0, 0]) == 1
    expected = bound.expected_outputs()
    assert [list(e) for e in expected] == [["ids_out"]] * 2 and int(expected[1]["ids_out"][0, 2]) == 1


# ---------------------------------------------------------------------------------------------------------
# Images


def test_image_folder_with_pillow_resize_crop_normalize_and_layout(tmp_path) -> None:
    from PIL import Image

    pixels = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", pixels)
    plan = ImagePreprocess(resize=6, crop=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    dataset = load_dataset(tmp_path)
    assert isinstance(dataset, ImageFolderDataset)
    dataset = ImageFolderDataset(tmp_path, plan).for_model(IMAGE_MODEL)
    png, npy = assert_reiterable(dataset)
    # resize=6 keeps 6x8 as it is (shorter side already 6); the center 4x4 crop starts at row 1, column 2.
    expected = ((pixels[1:5, 2:6].astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(png["x"], expected, rtol=1e-6)
    np.testing.assert_allclose(npy["x"], expected, rtol=1e-6)
    validate_sample(png, IMAGE_MODEL)

    nhwc = model_with_inputs(("x", TensorProto.FLOAT, [1, 3, 5, 3]))  # channels last, static 3x5
    (first, _) = as_list(ImageFolderDataset(tmp_path).for_model(nhwc))
    assert first["x"].shape == (1, 3, 5, 3)  # resized to the model's static size without a spec
    assert first["x"].min() >= 0 and first["x"].max() <= 1
    batched = as_list(ImageFolderDataset(tmp_path, plan, batch_size=2).for_model(IMAGE_MODEL))
    assert [b["x"].shape for b in batched] == [(2, 3, 4, 4)]


def test_image_crop_larger_than_the_image_is_a_data_error(tmp_path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DataError, match="crop 4x4 is larger"):
        list(ImageFolderDataset(tmp_path, ImagePreprocess(crop=4)).for_model(IMAGE_MODEL))


# ---------------------------------------------------------------------------------------------------------
# torch and Python objects


def test_torch_dataset_and_dataloader(rng) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    features = torch.from_numpy(rng.standard_normal((5, 3, 4, 4)).astype(np.float32))
    labels = torch.arange(5)
    pairs = TensorDataset(features, labels)  # (x, y) items: the label is ignored
    dataset = load_dataset(pairs).for_model(IMAGE_MODEL)
    assert isinstance(dataset, TorchDataset) and len(dataset) == 5
    samples = assert_reiterable(dataset)
    assert list(samples[0]) == ["x"] and samples[0]["x"].shape == (1, 3, 4, 4)  # a batch axis added
    np.testing.assert_array_equal(samples[3]["x"][0], features[3].numpy())

    loader = DataLoader(pairs, batch_size=2)
    batches = assert_reiterable(load_dataset(loader).for_model(IMAGE_MODEL))
    assert [b["x"].shape[0] for b in batches] == [2, 2, 1]
    with pytest.raises(DataError, match="shuffles"):
        load_dataset(DataLoader(pairs, batch_size=2, shuffle=True))

    class DictItems(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> dict:
            return {"ids": torch.full((4,), index), "mask": torch.ones(4, dtype=torch.int64), "labels": torch.tensor(1)}

    samples = as_list(TorchDataset(DictItems()).for_model(TWO_INPUTS))
    assert samples[1]["ids"].shape == (1, 4) and int(samples[1]["ids"][0, 0]) == 1
    assert validate_sample(samples[1], TWO_INPUTS).keys() == {"ids", "mask"}  # labels dropped


def test_iterable_dataset_from_a_list_or_a_function_but_not_a_generator() -> None:
    samples = [{"x": np.full((1, 2), i, np.float32)} for i in range(3)]
    assert len(load_dataset(samples)) == 3
    assert_same_samples(assert_reiterable(load_dataset(samples)), samples)
    made_by_function = load_dataset(lambda: iter(samples))
    assert_same_samples(assert_reiterable(made_by_function), samples)
    assert data.known_length(made_by_function) is None
    with pytest.raises(DataError, match="iterated only once"):
        load_dataset(s for s in samples)
    with pytest.raises(DataError, match="sample 0 is a tuple"):
        list(load_dataset([(np.zeros(2),)]))
    assert len(data.take(load_dataset(samples), 2)) == 2
    (single,) = as_list(load_dataset(samples[0]))  # a lone dict is one sample
    np.testing.assert_array_equal(single["x"], samples[0]["x"])


# ---------------------------------------------------------------------------------------------------------
# Validation


def test_validate_sample_names_the_input_and_the_mismatch() -> None:
    good = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}
    assert validate_sample({**good, "extra": np.zeros(1)}, TWO_INPUTS).keys() == {"ids", "mask"}
    cases = [
        ({"ids": good["ids"]}, "missing input 'mask'"),
        ({**good, "ids": good["ids"].astype(np.int32)}, "input 'ids' has dtype int32, the model takes int64"),
        ({**good, "ids": np.zeros((2, 5, 1), np.int64)}, "input 'ids' has rank 3"),
        ({**good, "mask": np.ones((2, 6), np.int64)}, "dim 'seq' is 5 in input 'ids' but 6 in input 'mask'"),
        ({**good, "ids": [1, 2]}, "input 'ids' is a list"),
    ]
    for sample, message in cases:
        with pytest.raises(DataError, match=message):
            validate_sample(sample, TWO_INPUTS, index=3)
    with pytest.raises(DataError, match="size 2 on axis 1, the model takes 3"):
        validate_sample({"x": np.zeros((1, 2, 4, 4), np.float32)}, IMAGE_MODEL)
    with_nan = np.zeros((1, 3, 4, 4), np.float32)
    with_nan[0, 0, 0, :2] = [np.nan, np.inf]
    with pytest.raises(DataError, match="sample 7: input 'x' holds 2 NaN or infinite values"):
        validate_sample({"x": with_nan}, IMAGE_MODEL, index=7)
    validate_sample({"x": with_nan}, IMAGE_MODEL, allow_nonfinite=True)


# ---------------------------------------------------------------------------------------------------------
# Synthetic inputs


def test_synthetic_token_ids_stay_below_the_embedding_table_found_in_the_graph() -> None:
    vocab, hidden = 37, 4
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids64"], to=TensorProto.INT64),
        helper.make_node("Gather", ["word_embeddings", "ids64"], ["embedded"]),
        helper.make_node("Gather", ["type_embeddings", "token_type_ids"], ["typed"]),
        helper.make_node("Add", ["embedded", "typed"], ["summed"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axes"], ["mask_3d"]),
        helper.make_node("Mul", ["summed", "mask_3d"], ["out"]),
        helper.make_node("Cast", ["flags"], ["flags_out"], to=TensorProto.FLOAT),
    ]
    model = model_with_inputs(
        ("input_ids", TensorProto.INT32, ["batch", "sequence"]),
        ("token_type_ids", TensorProto.INT64, ["batch", "sequence"]),
        ("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ("flags", TensorProto.BOOL, ["batch", 3]),
        nodes=nodes,
        initializers=[
            numpy_helper.from_array(np.zeros((vocab, hidden), np.float32), "word_embeddings"),
            numpy_helper.from_array(np.zeros((2, hidden), np.float32), "type_embeddings"),
            numpy_helper.from_array(np.array([2], np.int64), "axes"),
        ],
    )
    assert data.index_limits(model) == {"input_ids": vocab, "token_type_ids": 2}
    dataset = SyntheticDataset(model, dims={"batch": 3}, num_samples=20, seed=5)
    samples = assert_reiterable(dataset)
    assert len(dataset) == 20
    ids = np.stack([s["input_ids"] for s in samples])
    assert ids.dtype == np.int32 and ids.shape == (20, 3, 16)  # batch from dims, sequence default 16
    assert ids.min() >= 0 and ids.max() < vocab and ids.max() >= vocab - 5  # the range is used, not just 0/1
    assert {int(v) for s in samples for v in s["token_type_ids"].ravel()} == {0, 1}
    assert all((s["attention_mask"] == 1).all() for s in samples)
    assert samples[0]["flags"].dtype == np.bool_ and samples[0]["flags"].shape == (3, 3)
    for index, sample in enumerate(samples):
        validate_sample(sample, model, index=index)
    other_seed = as_list(SyntheticDataset(model, num_samples=1, seed=6))[0]
    assert not np.array_equal(other_seed["input_ids"], samples[0]["input_ids"][:1])


def test_synthetic_dims_bind_by_name_role_and_default(rng) -> None:
    model = model_with_inputs(
        ("pixels", TensorProto.FLOAT16, ["N", 3, "height", "width"]),
        ("tokens", TensorProto.FLOAT, ["batch_size", "seq_len", None]),
        ("plain", TensorProto.UINT8, [None, 2]),
    )
    (sample,) = as_list(SyntheticDataset(model, num_samples=1))
    assert sample["pixels"].shape == (1, 3, 32, 32) and sample["pixels"].dtype == np.float16
    assert sample["tokens"].shape == (1, 16, 8)
    assert sample["plain"].shape == (1, 2) and sample["plain"].dtype == np.uint8
    (sample,) = as_list(SyntheticDataset(model, dims={"batch": 4, "seq": 7, "width": 9}, num_samples=1))
    assert (
        sample["pixels"].shape == (4, 3, 32, 9)
        and sample["tokens"].shape == (4, 7, 8)
        and sample["plain"].shape == (4, 2)
    )
    minus_one = model_with_inputs(("x", TensorProto.FLOAT, [-1, 3, -1, -1]))  # paddle2onnx's dynamic dims
    assert as_list(SyntheticDataset(minus_one, num_samples=1))[0]["x"].shape == (1, 3, 32, 32)
    sequence = helper.make_model(
        helper.make_graph(
            [helper.make_node("SequenceLength", ["parts"], ["count"])],
            "m",
            [helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("count", TensorProto.INT64, [])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(DataError, match="input 'parts' is a sequence"):
        SyntheticDataset(sequence)


def test_as_dataset_binds_caps_and_falls_back_to_synthetic(tmp_path, rng) -> None:
    np.save(tmp_path / "x.npy", rng.standard_normal((6, 1, 3, 4, 4)).astype(np.float32))
    dataset = data.as_dataset(str(tmp_path / "x.npy"), IMAGE_MODEL, num_samples=4)
    assert len(dataset) == 4 and list(next(iter(dataset))) == ["x"]
    synthetic = data.as_dataset(None, IMAGE_MODEL, dims={"batch": 2}, num_samples=3)
    assert isinstance(synthetic, SyntheticDataset) and len(synthetic) == 3
    assert next(iter(synthetic))["x"].shape == (2, 3, 4, 4)
    with pytest.raises(DataError, match="no such data file or folder"):
        load_dataset(tmp_path / "missing.npz")


def test_synthetic_samples_are_drawn_once_and_handed_out_as_copies(monkeypatch) -> None:
    """Each read of a synthetic dataset gives the same values, drawn once (each parity comparison reads the samples
    anew): copies, so that a consumer writing into its arrays changes no later read; new sizes draw anew; samples
    past the byte budget are drawn each time."""
    from onnxkit.data import synthetic

    dataset = SyntheticDataset(IMAGE_MODEL, dims={"batch": 2}, num_samples=2)
    draws = []
    fill = dataset._fill
    monkeypatch.setattr(dataset, "_fill", lambda *args: draws.append(args[2]) or fill(*args))
    first = as_list(dataset)
    first[0]["x"][...] = 7.0  # the consumer's own copy
    second = as_list(dataset)
    assert draws == [0, 1]
    assert not np.shares_memory(first[1]["x"], second[1]["x"])
    np.testing.assert_array_equal(second[1]["x"], first[1]["x"])
    assert not np.any(second[0]["x"] == 7.0)
    fresh = as_list(SyntheticDataset(IMAGE_MODEL, dims={"batch": 2}, num_samples=2))
    np.testing.assert_array_equal(second[0]["x"], fresh[0]["x"])  # the values seed and index make, as ever
    dataset.shapes["x"] = (3, 3, 4, 4)  # what a probe's new sizes do
    assert as_list(dataset)[0]["x"].shape == (3, 3, 4, 4) and draws == [0, 1, 0, 1]
    monkeypatch.setattr(synthetic, "DRAWN_SAMPLES_BYTES", 0)
    unkept = SyntheticDataset(IMAGE_MODEL, num_samples=1)
    unkept_draws = []
    unkept_fill = unkept._fill
    monkeypatch.setattr(unkept, "_fill", lambda *args: unkept_draws.append(args[2]) or unkept_fill(*args))
    as_list(unkept), as_list(unkept)
    assert unkept_draws == [0, 0]
