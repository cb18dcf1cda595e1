"""RESULTS.md's deployment section (benchmarks/deploy.py): how the rows that are not a plain agreement read."""

from __future__ import annotations

from benchmarks import deploy


def record(model: str, target: str, **fields: object) -> dict[str, object]:
    return {
        "model": model,
        "target": target,
        "exit_code": 0,
        "data": "calibration samples",
        "passed": True,
        "skipped_run": None,
        "run_error": None,
        "samples": 8,
        "min_cosine": 1.0,
        "max_abs_error": 1e-6,
        "unsupported_ops": {},
        "model_problems": [],
    } | fields


def test_a_runtime_crash_a_noise_floor_agreement_and_a_rerun_read_as_such():
    crashed = "OpenVINO crashed (SIGSEGV) while converting the model with its ONNX frontend"
    run = {
        "started": "2026-11-30 16:24 UTC",
        "finished": "2026-11-30 17:31 UTC",
        "machine": "2 cores",
        "updates": [{"at": "2026-11-30 22:17 UTC", "models": ["wespeaker", "slanet"]}],
        "records": [
            record(
                "wespeaker",
                "openvino",
                exit_code=1,
                passed=False,
                skipped_run="the operator check failed",
                model_problems=[crashed],
                samples=None,
            ),
            record(
                "slanet",
                "ort-mobile",
                min_cosine=0.99999999,
                max_abs_error=0.00121,
                within_noise_floor=True,
                noise_floor_max_abs=0.00349,
            ),
            record("ir4", "openvino", exit_code=1, passed=False, run_error="OpenVINO cannot compile the model: x"),
        ],
    }
    lines = deploy.section_lines(run)
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines if line.startswith("| ")}
    assert f"crash: {crashed}" in rows["wespeaker"]
    assert (
        "agree: cosine 1.000000, max abs 0.00121, within the model's float noise (one ulp of input moves it 0.00349)"
        in rows["slanet"]
    )
    assert "refused: OpenVINO cannot compile the model: x" in rows["ir4"]
    assert rows["OpenVINO"] == "| OpenVINO | 0 | 1 | 0 | 1 |"
    assert "Rerun 2026-11-30 22:17 UTC (`--only ... --update`) for: wespeaker, slanet." in "\n".join(lines)
