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


def test_summary_line_counts_each_reason_with_its_key():
    from segflow.selection import summary_line

    reports = [report(c) for c in "abcd"] + [report("e", n_slices=200), report("f", problems=["image unreadable"])]
    line = summary_line(select_cases(reports, SELECTION, seed=0), SELECTION, "results/selection/cases.tsv")
    assert line == (
        "4 of 6 cases selected (3 trainval, 1 test); 2 left out: 1 has more than selection.max_slices (110) slices "
        "(theirs 200), 1 has data problems (e.g. f: image unreadable); reasons per case in results/selection/cases.tsv"
    )


@pytest.mark.parametrize(
    "reports, overrides, expected",
    [
        # air a little below -1024 HU, as in much real CT: the seed's hu_min drops every case
        ([report(f"c{i}", hu_min=-1083 + 3 * i) for i in range(6)] + [report("x", n_slices=200, hu_min=-1030)], {},
         ["0 trainval patients and 0 test cases left of 7 cases",
          "7 have HU min below selection.hu_min (-1024; their minima -1083..-1030)",
          "1 has more than selection.max_slices (110) slices (theirs 200)", "relax selection.hu_min",
          "relax selection.max_slices"]),
        ([report(c) for c in "abcdef"], {"max_slices": 1},
         ["0 trainval patients", "6 have more than selection.max_slices (1) slices (theirs 80)"]),
        ([report(c) for c in "abcd"], {"test_fraction": 0.9},
         ["1 trainval patients and 3 test cases",
          "selection.test_fraction (0.9) puts 3 of the 4 selected patients in test",
          "change selection.test_fraction"]),
        ([report(c) for c in "ab"], {},  # a case range that is too narrow
         ["1 trainval patients and 1 test cases left of 2 cases", "add cases (dataset.cases, dataset.n_cases)"]),
        ([report(c) for c in "abc"], {"test_fraction": 0.0}, ["0 test cases", "selection.test_fraction (0) puts 0"]),
        ([], {}, ["no cases to select from: dataset.cases (or dataset.n_cases) chooses none"]),
    ],
)  # fmt: skip
def test_selection_that_cannot_train_and_test_fails_naming_the_keys(reports, overrides, expected):
    from segflow.selection import check_trainable

    selection = {**SELECTION, **overrides}
    table = select_cases(reports, selection, seed=0)
    with pytest.raises(SelectionError) as error:
        check_trainable(table, selection, "results/logs/select_cases/select_cases.log")
    message = str(error.value)
    assert "\n" not in message
    for words in expected:
        assert words in message, message
    if reports:
        assert message.endswith("or see the reason per case in results/logs/select_cases/select_cases.log")


def test_a_selection_that_can_train_and_test_passes():
    from segflow.selection import check_trainable

    check_trainable(select_cases([report(c) for c in "abc"], SELECTION, seed=0), SELECTION)
