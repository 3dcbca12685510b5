"""Nothing stale, nothing silent: the real DAG re-imports a replaced source file, ignores a host-only change of
the download URL when checksums are known, and fails at select_cases when the selection cannot train and test.
docs/reliability.md lists every fault the tests cover."""

import os

import pytest
import yaml
from http_server import FaultServer
from workflow import clone_run, copy_workflow, jobs_run, planned_jobs, snakemake

from segflow.download import file_sha256
from segflow.io import save_nifti
from segflow.sources.synthetic import make_phantom

CASES = [f"case_{i:05d}" for i in range(6)]  # case_00003 and case_00005 fail the tiny config's filters


def overrides(workdir, name, values):
    (workdir / "config" / f"{name}.yaml").write_text(yaml.safe_dump(values))
    return ["--configfile", "config/tiny.yaml", f"config/{name}.yaml"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Six small phantoms in KiTS layout on disk, for the local source (and served over HTTP for kits23)."""
    root = tmp_path_factory.mktemp("phantoms")
    for case in CASES:
        image, label, affine = make_phantom(case, 11, matrix=64, slices=(20, 32))
        save_nifti(root / "local" / case / "imaging.nii.gz", image, affine)
        save_nifti(root / "local" / case / "segmentation.nii.gz", label, affine)
        save_nifti(root / "www/hf/images" / f"{case}.nii.gz", image, affine)
        save_nifti(root / "www/gh/dataset" / case / "segmentation.nii.gz", label, affine)
    return root


def test_a_source_file_replaced_by_mv_reimports_exactly_its_case(phantoms, tmp_path):
    import shutil

    data = shutil.copytree(phantoms / "local", tmp_path / "data")
    workdir = copy_workflow(tmp_path / "work")
    args = overrides(workdir, "local", {"dataset": {"source": "local", "path": str(data)}})
    run = snakemake(workdir, *args, "--until", "select_cases")
    assert "segflow: select_cases: 4 of 6 cases selected (3 trainval, 1 test); 2 left out: " in run.stderr
    assert "reasons per case in" in run.stderr
    assert planned_jobs(snakemake(workdir, *args, "-n", "--until", "select_cases").stdout) == {}

    seg = data / "case_00001" / "segmentation.nii.gz"
    staged = tmp_path / "corrected.nii.gz"
    image, label, affine = make_phantom("case_00001", 11, matrix=64, slices=(20, 32))
    label[label == 2] = 1  # a corrected segmentation
    save_nifti(staged, label, affine)
    os.utime(staged, (1_000_000_000, 1_000_000_000))  # older than raw/: mtimes alone would not tell
    os.replace(staged, seg)  # mv: a new inode
    plan = snakemake(workdir, *args, "-n", "--until", "select_cases").stdout
    jobs = planned_jobs(plan)
    assert jobs == {"download_case": 1, "inspect_case": 1, "select_cases": 1}, plan[-3000:]
    assert [w for rule, w in jobs_run(plan) if rule == "download_case"] == ["case=case_00001"]


def test_two_results_folders_on_one_local_dataset_leave_it_and_each_other_alone(phantoms, tmp_path):
    # Snakemake touches a job's outputs when it ends. Imports that shared the user's files (hard links) touched them
    # too, and each folder then saw the other's import as an updated input and redid everything after it.
    import shutil

    data = shutil.copytree(phantoms / "local", tmp_path / "data")
    mtimes = {f: f.stat().st_mtime_ns for f in sorted(data.rglob("*.nii.gz"))}
    first, second = copy_workflow(tmp_path / "first"), copy_workflow(tmp_path / "second")
    args = {w: overrides(w, "local", {"dataset": {"source": "local", "path": str(data)}}) for w in (first, second)}
    snakemake(first, *args[first], "--until", "select_cases")
    snakemake(second, *args[second], "--until", "select_cases")
    assert {f: f.stat().st_mtime_ns for f in mtimes} == mtimes
    assert planned_jobs(snakemake(first, *args[first], "-n", "--until", "select_cases").stdout) == {}


def test_a_host_only_change_reruns_no_download_when_checksums_are_known(phantoms, tmp_path):
    www = phantoms / "www"
    manifest = tmp_path / "SHA256SUMS"
    lines = []
    for case in CASES[:3]:
        for name in (f"images/{case}.nii.gz", f"dataset/{case}/segmentation.nii.gz"):
            served = www / ("hf" if name.startswith("images") else "gh") / name
            lines.append(f"{file_sha256(served)}  {name}")
    manifest.write_text("\n".join(lines) + "\n")
    workdir = copy_workflow(tmp_path / "work")
    with FaultServer(www) as server:

        def config(host, with_manifest=True):
            dataset = {
                "source": "kits23", "cases": CASES[:3], "download": {"retries": 1, "timeout": 5.0, "backoff": 0.01},
                "imaging_base_url": server.url("hf").replace("127.0.0.1", host),
                "segmentation_base_url": server.url("gh").replace("127.0.0.1", host),
            }  # fmt: skip
            if with_manifest:
                dataset["manifest"] = str(manifest)
            return overrides(workdir, f"{host}_{with_manifest}", {"dataset": dataset})

        snakemake(workdir, *config("127.0.0.1"), "--until", "download_case")
        # The same bytes from another host (a mirror): nothing to download again.
        mirror = planned_jobs(snakemake(workdir, *config("localhost"), "-n", "--until", "inspect_case").stdout)
        assert "download_case" not in mirror and mirror.get("inspect_case") == 3, mirror
        # Without the manifest the bytes are not known to be the same, so the URL still counts.
        unknown = planned_jobs(snakemake(workdir, *config("localhost", False), "-n", "--until", "inspect_case").stdout)
        assert unknown.get("download_case") == 3


@pytest.mark.parametrize(
    "selection, words",
    [
        ({"max_slices": 1}, ["6 have more than selection.max_slices (1) slices", "relax selection.max_slices"]),
        ({"test_fraction": 0.9}, ["selection.test_fraction (0.9) puts 3 of the 4 selected patients in test"]),
        ({"hu_min": -900}, ["have HU min below selection.hu_min (-900; their minima", "relax selection.hu_min"]),
    ],
)
def test_a_selection_that_cannot_train_fails_in_select_cases(tiny_run, tmp_path, selection, words):
    workdir = clone_run(tiny_run, tmp_path / "run")
    process = snakemake(workdir, *overrides(workdir, "bad", {"selection": selection}), check=False)
    assert process.returncode != 0
    lines = [line for line in process.stderr.splitlines() if line.startswith("segflow: select_cases: SelectionError")]
    assert len(lines) == 1, process.stderr[-3000:]
    for expected in words:
        assert expected in lines[0], lines[0]
    assert "results/logs/select_cases/select_cases.log" in lines[0]
    ran = {rule for rule, _ in jobs_run(process.stdout + process.stderr)}
    assert ran == {"select_cases"}  # it fails at once: nothing after it starts
    assert not (workdir / "results/selection/cases.tsv").exists()


def test_a_bad_init_checkpoint_stops_snakemake_at_start_up(tmp_path):
    workdir = copy_workflow(tmp_path / "work")
    (workdir / "notes.pt").write_text("not a checkpoint")
    process = snakemake(workdir, *overrides(workdir, "init", {"train": {"init_checkpoint": "notes.pt"}}), check=False)
    assert process.returncode != 0
    assert (
        process.stderr.strip()
        .splitlines()[-1]
        .startswith("segflow: train.init_checkpoint notes.pt is not a torch checkpoint")
    ), process.stderr[-2000:]
    assert not (workdir / "results").exists()  # nothing ran


def test_cuda_without_a_gpu_fails_in_one_line_when_training_starts(tiny_run, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    workdir = clone_run(tiny_run, tmp_path / "run")
    process = snakemake(workdir, *overrides(workdir, "cuda", {"train": {"device": "cuda"}}), check=False)
    assert process.returncode != 0
    lines = [line for line in process.stderr.splitlines() if line.startswith("segflow: train_round 0: DeviceError")]
    assert len(lines) == 1 and "train.device is 'cuda', but the torch on" in lines[0], process.stderr[-3000:]


@pytest.mark.parametrize(
    "values, words",
    [
        ({"train": {"epoch": 3}}, "'epoch' was unexpected"),
        ({"train": {"epochs": "six"}}, "'six' is not of type 'integer'"),
        ({"train": {"device": "gpu"}}, "'gpu' does not match"),
    ],
)  # fmt: skip
def test_a_config_typo_or_wrong_type_stops_at_start_up(tmp_path, values, words):
    workdir = copy_workflow(tmp_path / "work")
    process = snakemake(workdir, *overrides(workdir, "typo", values), "-n", check=False)
    output = process.stdout + process.stderr
    assert process.returncode != 0 and words in output, output[-2000:]
    assert not (workdir / "results").exists()
