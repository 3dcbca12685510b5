"""Importers that bring every dataset into the one canonical raw layout.

Each source module exposes two functions:

``list_cases(dataset: dict, seed: int) -> list[str]``
    the case ids the config asks for (``dataset.cases``: all, a list, a range or the first N), known before
    anything is downloaded so that the DAG can be built at once.
``import_case(dataset: dict, case_id: str, image_out: Path, seg_out: Path, seed: int) -> None``
    writes ``image_out`` (CT in HU) and ``seg_out`` (uint8 labels 0 background, 1 kidney, 2 tumour, 3 cyst, or the
    configured mapping) atomically; raises ``SourceError`` with a one-line message naming the file or URL.

and optionally

``case_inputs(dataset: dict, case_ids: list[str]) -> dict[str, CaseInputs]``
    what each case's import reads, known before it runs: the files on disk (Snakemake inputs of download_case, so
    replacing one reimports exactly its case) and an identity for what is not a local file (a zip member's CRC,
    a manifest checksum), which goes into the job's params. Sources without it (synthetic) have neither.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from types import ModuleType

# Imported lazily so that the synthetic default needs none of the download machinery.
SOURCES = {
    "synthetic": "segflow.sources.synthetic",
    "kits23": "segflow.sources.kits",
    "kits19": "segflow.sources.kits",
    "local": "segflow.sources.local",
    "flare22": "segflow.sources.flare22",
    "png_pairs": "segflow.sources.png_pairs",
    "uwmgi": "segflow.sources.uwmgi",
    "phantom": "segflow.sources.phantom",
}


# dataset keys that choose which cases exist (adding cases must not reimport the others), or that change how a file
# is fetched or checked but never its bytes: none of them is part of a case's import params.
CHOOSING_KEYS = ("n_cases", "cases")
NO_CONTENT_KEYS = ("manifest", "download")


class SourceError(RuntimeError):
    """A dataset could not be read or fetched; the message names the file or URL and what to do."""


@dataclass(frozen=True)
class CaseInputs:
    """What one case's import reads. ``files``: local files (Snakemake inputs). ``identity``: a JSON-ready value
    that changes whenever the imported bytes may change, for what Snakemake cannot see as a file (params).
    ``replaces``: dataset keys the identity stands in for (a base URL whose files have manifest checksums)."""

    files: tuple[str, ...] = ()
    identity: dict = field(default_factory=dict)
    replaces: tuple[str, ...] = ()


def case_inputs(dataset: dict, case_ids: list[str]) -> dict[str, CaseInputs]:
    """{case id: CaseInputs} for every case (empty ones for sources that read no local files)."""
    source = get_source(dataset)
    found = source.case_inputs(dataset, case_ids) if hasattr(source, "case_inputs") else {}
    return {case: found.get(case, CaseInputs()) for case in case_ids}


def case_params(dataset: dict, inputs: CaseInputs) -> dict:
    """The params of one case's import: what its content depends on, and nothing else."""
    skip = set(CHOOSING_KEYS) | set(NO_CONTENT_KEYS) | set(inputs.replaces)
    params = {key: value for key, value in dataset.items() if key not in skip}
    if inputs.identity:
        params["identity"] = inputs.identity
    return params


def identity_digest(value) -> str:
    """A short stable digest of a JSON-ready value (keeps per-case params small in Snakemake's metadata)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


def source_module_name(dataset: dict) -> str:
    """The module that lists and imports the configured source's cases. The synthetic source's multi-organ and
    MRI-like phantoms (``dataset.synthetic.organs`` / ``modality``) come from segflow.sources.organs, which builds
    on the plain phantoms of segflow.sources.synthetic."""
    name = dataset["source"]
    if name not in SOURCES:
        raise SourceError(f"unknown dataset.source {name!r}; choose one of {sorted(SOURCES)}")
    synthetic = dataset.get("synthetic") or {}
    if name == "synthetic" and ("organs" in synthetic or "modality" in synthetic):
        return "segflow.sources.organs"
    return SOURCES[name]


def get_source(dataset: dict) -> ModuleType:
    return importlib.import_module(source_module_name(dataset))


def list_cases(dataset: dict, seed: int) -> list[str]:
    return get_source(dataset).list_cases(dataset, seed)


def import_case(dataset: dict, case_id: str, image_out, seg_out, seed: int) -> None:
    get_source(dataset).import_case(dataset, case_id, image_out, seg_out, seed)


def select_ids(all_ids: list[str], cases) -> list[str]:
    """Apply ``dataset.cases`` to an ordered id list.

    ``cases`` is ``None``/``"all"`` (every id), an int N (the first N), a dict ``{start, stop}`` (a half-open range
    of positions in ``all_ids``) or a list of ids (kept in the given order; unknown ids are an error).
    """
    if cases is None or cases == "all":
        return list(all_ids)
    if isinstance(cases, int):
        return list(all_ids[:cases])
    if isinstance(cases, dict):
        return list(all_ids[cases.get("start", 0) : cases.get("stop", len(all_ids))])
    known = set(all_ids)
    unknown = [c for c in cases if c not in known]
    if unknown:
        raise SourceError(f"dataset.cases names unknown case ids: {', '.join(map(str, unknown[:10]))}")
    return [str(c) for c in cases]
