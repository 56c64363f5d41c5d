"""The benchmark validity rule on synthetic rows: a speed is quotable only from a physical run."""

import json
import pathlib
import sys

import pytest

from mlff_jax.md_guards import run_record, validity

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))


def _row(**changes):
    row = {"system": "water_box_999_periodic", "atom_steps_per_s": 1.0e6, "overflow_during_timing": False, "guard": None,
           "temperature_start_K": 300.0, "temperature_max_K": 420.0}
    row.update(changes)
    return row


def test_a_physical_row_is_valid():
    assert validity(_row()) == (True, [])


@pytest.mark.parametrize("changes, reason", [
    (dict(overflow_during_timing=True), "overflow"),
    (dict(guard="simulation guard tripped in chunk 3 (steps 61-80): temperature (K) = 22000"), "guard tripped"),
    (dict(temperature_max_K=601.0), "more than 2 x the start"),
    (dict(temperature_max_K=None), "temperature"),
])
def test_a_row_that_overflowed_tripped_a_guard_or_heated_up_is_invalid(changes, reason):
    valid, reasons = validity(_row(**changes))
    assert not valid and any(reason in r for r in reasons), reasons


def test_twice_the_start_temperature_is_still_valid():
    assert validity(_row(temperature_max_K=600.0))[0]


def test_a_row_without_physics_is_not_checked_hence_invalid():
    row = {"system": "water_box_99999_periodic", "atom_steps_per_s": 1.26e6, "neighbor_overflow_during_timing": True}
    valid, reasons = validity(row)
    assert not valid and "not checked" in reasons[0]


def test_run_record_measures_the_drift_and_applies_the_rule():
    times = [0.0, 500.0, 1000.0]  # fs
    record = run_record([300.0, 310.0, 650.0], [-10.0, -9.0, -8.0], times, 10, start_temperature=300.0, min_pair_distance=0.9)
    assert record["temperature_mean_K"] == pytest.approx(420.0) and record["temperature_max_K"] == 650.0
    assert record["nve_energy_change_eV_per_atom"] == pytest.approx(0.2)
    assert record["nve_drift_eV_per_atom_per_ps"] == pytest.approx(0.2)  # 0.2 eV/atom over 1 ps
    assert not record["valid"] and "temperature" in record["invalid_reasons"][0]
    calm = run_record([300.0, 310.0], [-10.0, -10.0], [0.0, 5.0], 10, start_temperature=300.0, max_temperature=590.0)
    assert calm["valid"] and calm["temperature_max_K"] == 590.0


def test_quotable_rows_and_invalid_rows_of_a_results_file(tmp_path):
    from validity import invalid_rows, quotable

    good, hot, unchecked, not_md = _row(system="a"), _row(system="b", temperature_max_K=5000.0), {"system": "c", "atom_steps_per_s": 1.0}, {"system": "d", "median_s": 1.0}
    assert quotable([good, hot, unchecked, not_md]) == [good, not_md]
    path = tmp_path / "md_boxes.json"
    path.write_text(json.dumps({"rows": [good, hot, unchecked, not_md]}))
    assert [system for system, _ in invalid_rows(path)] == ["b", "c"]


def test_run_all_fails_when_a_headline_row_is_invalid(tmp_path):
    import run_all

    (tmp_path / "md_boxes.json").write_text(json.dumps({"rows": [_row(), _row(system="hot", guard="temperature")]}))
    assert [s for s, _ in run_all.headline_invalid_rows(str(tmp_path / "md_boxes.json"))] == ["hot"]
    assert run_all.headline_invalid_rows(str(tmp_path / "missing.json"))[0][0] == "(no results)"


def test_run_all_exits_nonzero_on_an_invalid_headline_row(tmp_path, monkeypatch):
    import run_all

    hot = {"rows": [_row(system="hot", temperature_max_K=30000.0)]}
    script = f"import json; json.dump({hot!r}, open({str(tmp_path / 'md_boxes.json')!r}, 'w'))"
    monkeypatch.setattr(run_all, "plan", lambda upstream, out: {"md_boxes": ([sys.executable, "-c", script, "--boxes", "1", "--checkpoint", "x"], 60)})
    assert run_all.main(["--upstream", str(tmp_path), "--out", str(tmp_path), "--only", "md_boxes"]) == 1
    good = {"rows": [_row()]}
    script = f"import json; json.dump({good!r}, open({str(tmp_path / 'md_boxes.json')!r}, 'w'))"
    monkeypatch.setattr(run_all, "plan", lambda upstream, out: {"md_boxes": ([sys.executable, "-c", script, "--boxes", "1", "--checkpoint", "x"], 60)})
    assert run_all.main(["--upstream", str(tmp_path), "--out", str(tmp_path), "--only", "md_boxes"]) == 0


def test_kernel_choice_ignores_invalid_rows(tmp_path):
    import make_kernels_choice

    env = {"platform": "gpu", "device": "H100", "time": "t"}
    rows = [{"key": "k", "implementation": "xla", "median_s": 2.0, "finite": True},
            {"key": "k", "implementation": "pallas", "median_s": 1.0, "finite": True, "valid": False, "invalid_reasons": ["overflow"]}]
    path = tmp_path / "api.json"
    path.write_text(json.dumps({"workload": make_kernels_choice.API_WORKLOAD, "environment": env, "rows": rows}))
    best, rejected = make_kernels_choice.collect([path])
    assert set(best[("H100", "k")]) == {"xla"} and "invalid" in rejected[0]
