import pytest

from segflow.selection import SelectionError, patient_of, select_cases, split_patients

SELECTION = {"max_slices": 110, "hu_min": -1024, "hu_max": 1679, "test_fraction": 0.25}


def report(case_id, n_slices=80, hu_min=-1024, hu_max=1500, problems=()):
    return {"case_id": case_id, "n_slices": n_slices, "hu_min": hu_min, "hu_max": hu_max, "problems": list(problems)}


def test_filters_and_reasons():
    reports = [
        report("a"),
        report("b", n_slices=200),
        report("c", hu_min=-2048),
        report("d", hu_max=3071),
        report("e", problems=["segmentation is empty (only background)"]),
        report("f"),
    ]
    table = select_cases(reports, SELECTION, seed=0).set_index("case_id")
    assert list(table["selected"]) == [True, False, False, False, False, True]
    assert table.loc["b", "reason"] == "200 slices > max_slices 110"
    assert table.loc["c", "reason"] == "HU min -2048 < hu_min -1024"
    assert table.loc["d", "reason"] == "HU max 3071 > hu_max 1679"
    assert "empty" in table.loc["e", "reason"]
    assert set(table.loc[["a", "f"], "split"]) == {"trainval", "test"}
    assert (table.loc[["b", "c", "d", "e"], "split"] == "").all()


def test_strict_mode_lists_every_bad_case():
    reports = [report("a", problems=["x"]), report("b"), report("c", problems=["y"])]
    with pytest.raises(SelectionError, match="2 case\\(s\\).*a: x.*c: y"):
        select_cases(reports, {**SELECTION, "strict": True}, seed=0)


def test_split_is_seeded_and_by_patient():
    patients = [f"p{i}" for i in range(20)]
    first, again = split_patients(patients, 0.25, 3), split_patients(patients, 0.25, 3)
    assert first == again
    assert sum(v == "test" for v in first.values()) == 5
    assert split_patients(patients, 0.25, 4) != first
    # Adding a patient moves at most one existing patient across the boundary.
    grown = split_patients(patients + ["p20"], 0.25, 3)
    assert sum(grown[p] != first[p] for p in patients) <= 1
    table = select_cases([report(c) for c in ["case1_day1", "case1_day2", "case2_day1", "case3_day1"]], SELECTION, 1)
    splits = dict(zip(table["case_id"], table["split"]))
    assert splits["case1_day1"] == splits["case1_day2"]
    assert patient_of("case12_day20") == "case12" and patient_of("case_00012") == "case_00012"
