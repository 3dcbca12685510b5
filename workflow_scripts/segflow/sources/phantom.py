"""Synthesised contrast CT around real label maps: phantoms on real anatomy (``dataset.source: phantom``).

``dataset.phantom.label_dir`` is a folder of KiTS-layout label maps, ``<dir>/<case>/segmentation.nii.gz`` (also
found under ``<dir>/dataset`` or ``<dir>/data``, i.e. a kits23 or kits19 clone without its imaging); the case id is
the folder name. For each case the source writes the labels unchanged (uint8) and a CT image in HU (int16) with
exactly the label map's shape and affine, deterministic per (seed, case id).

The image is built in RAS voxel order whatever the file's orientation, around the labelled kidneys:

* the kidney label gets a bright cortex and a darker medulla from a distance transform inside it (with columns of
  cortex reaching inward), and a darker collecting system at its deepest part; tumours (label 2) are hypo-, iso- or
  heterogeneously enhancing with a necrotic core, per case and per lesion; cysts (label 3) are near water;
* the rest of the abdomen is placed relative to the kidneys: the spine between and behind the two kidney
  components, psoas and back muscles, aorta and IVC in front of it with renal vessels to each kidney, liver and
  spleen (enhancing like medulla) touching the kidneys' upper poles, gallbladder, pancreas, bowel loops with gas,
  fluid and oral contrast, ribs above and iliac bones below the kidneys, a body outline with skin, fat and muscle,
  and the patient table;
* scanner quirks: correlated noise (8-30 HU per case), beam-hardening streaks from the spine, blur along z from
  the slice thickness and partial volume at edges, a circular field of view padded with -2048 or -1024 in some
  cases, and an occasional calibration offset.

Everything but the kidneys is drawn on a coarse grid (about 2.4 x 2.4 x 3 mm) and interpolated up; the kidneys and
their lesions are drawn at full resolution in boxes around them. A 512x512x611 case takes about 11 s of CPU to
make and 4 s to write (gzip).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.io import atomic_path, save_nifti
from segflow.seeding import rng_for
from segflow.sources import SourceError, select_ids

log = logging.getLogger(__name__)

WHAT = "a folder of <case>/segmentation.nii.gz label maps (KiTS layout, e.g. a kits23 clone)"
LABEL_SUFFIXES = (".nii.gz", ".nii")
COARSE_XY_MM = 2.4  # in-plane spacing of the grid the surroundings are drawn on
COARSE_Z_MM = 3.0
DEFAULTS = {
    "label_dir": None,
    "noise": [8.0, 30.0],  # HU, per-case standard deviation range
    "fov_padding_fraction": 0.5,  # share of cases padded outside a circular field of view
    "offset_fraction": 0.15,  # share of cases with a calibration offset of 15-40 HU
}


# --- the source interface -----------------------------------------------------------------------------------------


def options(dataset: dict) -> dict:
    return {**DEFAULTS, **(dataset.get("phantom") or {})}


def label_root(dataset: dict) -> Path:
    raw = options(dataset).get("label_dir")
    if not raw:
        raise SourceError(f"dataset.phantom.label_dir is not set; point it at {WHAT}")
    path = Path(str(raw)).expanduser()
    if not path.is_dir():
        raise SourceError(f"dataset.phantom.label_dir {path} is not a folder; point it at {WHAT}")
    for candidate in (path, path / "dataset", path / "data"):
        if candidate.is_dir() and any(_label_file(p) for p in candidate.iterdir() if p.is_dir()):
            return candidate
    raise SourceError(f"dataset.phantom.label_dir {path} holds no <case>/segmentation.nii.gz; expected {WHAT}")


def find_labels(dataset: dict) -> dict[str, Path]:
    from segflow.sources.common import check_case_ids, natural_key

    root = label_root(dataset)
    found = {}
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            label = _label_file(folder)
            if label is not None:
                found[folder.name] = label
    ids = check_case_ids(sorted(found, key=natural_key), root)
    return {i: found[i] for i in ids}


def list_cases(dataset: dict, seed: int) -> list[str]:
    return select_ids(list(find_labels(dataset)), dataset.get("cases"))


def import_case(dataset: dict, case_id: str, image_out, seg_out, seed: int) -> None:
    root = label_root(dataset)
    label_path = _label_file(root / case_id)
    if label_path is None:
        raise SourceError(f"{root / case_id / 'segmentation.nii.gz'}: no such label map for case {case_id}")
    opts = options(dataset)
    try:
        make_case(label_path, image_out, seg_out, seed, case_id, opts)
    except BaseException:
        Path(image_out).unlink(missing_ok=True)
        Path(seg_out).unlink(missing_ok=True)
        raise


def make_case(label_path, image_out, seg_out, seed: int, case_id: str, opts: dict | None = None) -> dict:
    """Write the phantom image and the unchanged labels of one case; return the case's drawn parameters."""
    import nibabel as nib

    opts = {**DEFAULTS, **(opts or {})}
    label_path = Path(label_path)
    try:
        volume = nib.load(str(label_path))
        labels = np.asanyarray(volume.dataobj)
    except Exception as error:  # nibabel raises many kinds on damaged files
        raise SourceError(f"{label_path}: cannot read label map ({type(error).__name__}: {error})") from None
    if labels.ndim != 3:
        raise SourceError(f"{label_path}: label map has {labels.ndim} dimensions, expected 3")
    labels = _uint8_labels(labels, str(label_path))
    image, params = synthesise(labels, volume.affine, seed, case_id, opts)
    save_nifti(image_out, image, volume.affine)
    _write_labels(label_path, volume, labels, seg_out)
    return params


def _label_file(folder: Path) -> Path | None:
    return next((folder / f"segmentation{s}" for s in LABEL_SUFFIXES if (folder / f"segmentation{s}").is_file()), None)


def _uint8_labels(labels: np.ndarray, where: str) -> np.ndarray:
    from segflow.sources.common import to_uint8_labels

    return labels if labels.dtype == np.uint8 else to_uint8_labels(labels, where)


def _write_labels(label_path: Path, volume, labels: np.ndarray, seg_out) -> None:
    """A plain uint8 .nii.gz is copied byte for byte; anything else is rewritten as uint8 with its affine."""
    from segflow.sources.common import is_plain_label_nifti

    if is_plain_label_nifti(label_path):
        with atomic_path(seg_out) as tmp:
            shutil.copyfile(label_path, tmp)
    else:
        save_nifti(seg_out, labels, volume.affine)


# --- geometry -----------------------------------------------------------------------------------------------------


@dataclass
class Grid:
    """A voxel grid in RAS order: index i along axis a sits at ``origin[a] + i * step[a]`` mm (from voxel 0 of the
    full grid), x toward the patient's right, y anterior, z superior."""

    shape: tuple[int, int, int]
    step: np.ndarray
    origin: np.ndarray

    def axes(self):
        x, y, z = (self.origin[a] + np.arange(self.shape[a], dtype=np.float32) * self.step[a] for a in range(3))
        return x[:, None, None], y[None, :, None], z[None, None, :]


def to_ras(array: np.ndarray, affine: np.ndarray):
    """(RAS-ordered view of ``array``, voxel sizes in that order, orientation to undo it)."""
    from nibabel import orientations

    ornt = orientations.io_orientation(affine)
    spacing = ras_spacing(affine)
    back = orientations.ornt_transform(np.array([[0, 1], [1, 1], [2, 1]]), ornt)
    return orientations.apply_orientation(array, ornt), spacing, back


def from_ras(array: np.ndarray, back) -> np.ndarray:
    from nibabel import orientations

    return orientations.apply_orientation(array, back)


def upsample(coarse: np.ndarray, shape, factors) -> np.ndarray:
    """Separable linear interpolation from a cell-centred coarse grid (block ``factors``) onto ``shape``."""
    out = coarse.astype(np.float32, copy=False)
    for axis in (2, 1, 0):  # the last (largest) step copies whole rows
        out = _upsample_axis(out, int(axis), int(shape[axis]), float(factors[axis]))
    return out


def _upsample_axis(a: np.ndarray, axis: int, n_out: int, factor: float) -> np.ndarray:
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    u = np.clip((np.arange(n_out) + 0.5) / factor - 0.5, 0, n_in - 1)
    if n_in == 1:
        return np.take(a, np.zeros(n_out, dtype=np.intp), axis=axis)
    i0 = np.minimum(np.floor(u).astype(np.intp), n_in - 2)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = (u - i0).astype(np.float32)
    if axis == 0:  # row by row: no full-size temporaries (same arithmetic as below, so the same result)
        out = np.empty((n_out, *a.shape[1:]), dtype=np.float32)
        for i in range(n_out):
            np.subtract(a[i0[i] + 1], a[i0[i]], out=out[i])
            out[i] *= w[i]
            out[i] += a[i0[i]]
        return out
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, i0 + 1, axis=axis)
    hi -= lo
    hi *= w.reshape(shape)
    lo += hi
    return lo


def block_mean(mask: np.ndarray, factors) -> np.ndarray:
    """Fraction of each coarse block (``factors`` voxels per axis, last block partial) that ``mask`` covers."""
    out = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    counts = np.ones((1, 1, 1), dtype=np.float32)
    for axis in np.argsort(factors)[::-1]:  # the largest reduction first, in integers
        f = int(factors[axis])
        if f == 1:
            continue
        starts = np.arange(0, out.shape[axis], f)
        out = np.add.reduceat(out, starts, axis=axis, dtype=np.uint16)
        shape = [1] * 3
        shape[axis] = len(starts)
        counts = counts * (np.minimum(starts + f, mask.shape[axis]) - starts).reshape(shape).astype(np.float32)
    return out.astype(np.float32) / counts


def smooth_noise(rng, shape, sigma_vox: float) -> np.ndarray:
    """Unit-variance smooth random field: white noise blurred on a grid about sigma/2 coarser, then upsampled."""
    from scipy import ndimage

    f = max(1, int(sigma_vox // 2))
    small = tuple(shape) if f == 1 else tuple(max(2, -(-n // f)) for n in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(small, dtype=np.float32), sigma_vox / f, mode="wrap")
    field /= max(float(field.std()), 1e-6)
    if f > 1:
        field = upsample(field, shape, (shape[0] / small[0], shape[1] / small[1], shape[2] / small[2]))
    return field


# --- painting on the coarse grid ----------------------------------------------------------------------------------


class Canvas:
    """The coarse HU volume with soft (partial-volume) painting of shapes given in mm."""

    def __init__(self, grid: Grid, value: float):
        self.grid = grid
        self.hu = np.full(grid.shape, value, dtype=np.float32)
        self.x, self.y, self.z = grid.axes()
        self.edge = float(np.mean(grid.step[:2]))

    def weight(self, signed_mm: np.ndarray) -> np.ndarray:
        """Coverage of a voxel by a shape whose signed distance (negative inside) is ``signed_mm``."""
        return np.clip(0.5 - signed_mm / self.edge, 0.0, 1.0).astype(np.float32)

    def paint(self, weight, value, where=None) -> None:
        if where is not None:
            weight = weight * where
        value = np.asarray(value, dtype=np.float32)
        self.hu += weight * (value - self.hu)

    def ellipsoid(self, centre, radii, bumps=None) -> np.ndarray:
        """An ellipsoid; ``bumps`` (mm, shaped like the canvas) pushes its surface in and out."""
        q = ((self.x - centre[0]) / radii[0]) ** 2 + ((self.y - centre[1]) / radii[1]) ** 2
        q = q + ((self.z - centre[2]) / radii[2]) ** 2
        signed = (np.sqrt(q) - 1.0) * float(min(radii))
        return self.weight(signed if bumps is None else signed + bumps)

    def tube(self, cx, cy, rx, ry) -> np.ndarray:
        """An elliptic cylinder along z; centre and radii may vary with z (arrays shaped like ``self.z``)."""
        q = ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2
        return self.weight((np.sqrt(q) - 1.0) * np.minimum(rx, ry))

    def segment(self, p0, p1, radius) -> np.ndarray:
        """A cylinder of ``radius`` mm between points p0 and p1 (mm), restricted to its bounding box."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        out = np.zeros(self.grid.shape, dtype=np.float32)
        box = self._box(np.minimum(p0, p1) - radius - self.edge, np.maximum(p0, p1) + radius + self.edge)
        if box is None:
            return out
        x, y, z = self.x[box[0], :, :], self.y[:, box[1], :], self.z[:, :, box[2]]
        d = p1 - p0
        t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / max(float(d @ d), 1e-6), 0, 1)
        dist = np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)
        out[box] = self.weight(dist - radius)
        return out

    def _box(self, lo_mm, hi_mm):
        g = self.grid
        lo = np.floor((lo_mm - g.origin) / g.step).astype(int)
        hi = np.ceil((hi_mm - g.origin) / g.step).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, g.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


# --- the phantom --------------------------------------------------------------------------------------------------


def synthesise(labels: np.ndarray, affine: np.ndarray, seed: int, case_id: str, opts: dict | None = None):
    """The CT image (int16 HU, same shape and voxel order as ``labels``) and the parameters drawn for it."""
    opts = {**DEFAULTS, **(opts or {})}
    rng = rng_for(seed, "phantom", case_id)
    lab, spacing, back = to_ras(labels, affine)
    shape = lab.shape
    factors = np.array(
        [
            max(1, round(COARSE_XY_MM / spacing[0])),
            max(1, round(COARSE_XY_MM / spacing[1])),
            max(1, round(COARSE_Z_MM / spacing[2])),
        ]
    )
    coarse_shape = tuple(int(-(-n // f)) for n, f in zip(shape, factors))
    coarse_grid = Grid(coarse_shape, spacing * factors, (factors - 1) / 2.0 * spacing)
    fraction = block_mean(lab > 0, factors)
    params = draw_parameters(rng, opts, spacing)
    anatomy = locate_kidneys(fraction, coarse_grid, shape, spacing)
    params["anatomy"] = {k: v for k, v in anatomy.items() if k != "components"}

    canvas = Canvas(coarse_grid, -1000.0)
    paint_surroundings(canvas, rng, params, anatomy, fraction)
    image = upsample(canvas.hu, shape, factors)
    del canvas
    paint_kidneys(image, lab, spacing, rng, params)
    add_scanner_effects(image, spacing, rng, params, anatomy)
    return from_ras(image.astype(np.int16), back), params


def ras_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes in RAS axis order (the order ``to_ras`` puts the axes in)."""
    from nibabel import orientations

    ornt = orientations.io_orientation(affine)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return spacing


def case_parameters(affine: np.ndarray, seed: int, case_id: str, opts: dict | None = None) -> dict:
    """The per-case tissue and scanner values ``synthesise`` draws first, without making the image."""
    return draw_parameters(rng_for(seed, "phantom", case_id), {**DEFAULTS, **(opts or {})}, ras_spacing(affine))


def draw_parameters(rng, opts: dict, spacing) -> dict:
    cortex = float(rng.uniform(150, 250))
    medulla = float(rng.uniform(60, min(140.0, cortex - 40)))
    noise_lo, noise_hi = (float(v) for v in opts["noise"])
    fov = rng.random() < float(opts["fov_padding_fraction"])
    return {
        "cortex": cortex,
        "medulla": medulla,
        "cortex_mm": float(rng.uniform(3.5, 7.0)),
        "pelvis": float(rng.uniform(5, 35)),
        "liver": float(rng.uniform(55, 100)),
        "spleen_extra": float(rng.uniform(0, 20)),
        "aorta": float(rng.uniform(150, 300)),
        "ivc_fraction": float(rng.uniform(0.45, 0.95)),
        "bone": float(rng.uniform(700, 1200)),
        "marrow": float(rng.uniform(180, 320)),
        "muscle": float(rng.uniform(40, 60)),
        "fat": float(rng.uniform(-110, -90)),
        "oral_contrast": float(rng.uniform(150, 450)) if rng.random() < 0.5 else None,
        "tumour_kind": str(rng.choice(["hypo", "iso", "heterogeneous"], p=[0.4, 0.25, 0.35])),
        "cyst": float(rng.uniform(0, 25)),
        "noise": float(rng.uniform(noise_lo, noise_hi)),
        "streaks": float(rng.uniform(15, 60)),
        "fov_padding": (int(rng.choice([-2048, -1024])) if fov else None),
        "offset": (float(rng.choice([-1, 1]) * rng.uniform(15, 40)) if rng.random() < opts["offset_fraction"] else 0.0),
        "slice_thickness_mm": float(spacing[2] * (rng.uniform(1.0, 2.0) if spacing[2] < 1.5 else 1.0)),
    }


def locate_kidneys(fraction: np.ndarray, grid: Grid, shape, spacing) -> dict:
    """Kidney components (coarse), and where the spine and the body go relative to them (mm, RAS)."""
    from scipy import ndimage

    extent = np.asarray(shape) * spacing
    centre = extent / 2.0
    components, n = ndimage.label(fraction > 0.25)
    found = []
    if n:
        sizes = ndimage.sum(fraction, components, range(1, n + 1)) * float(np.prod(grid.step))
        for index in np.argsort(sizes)[::-1][:2]:
            if sizes[index] < 5000 and found:  # under 5 ml: a fragment, not a second kidney
                continue
            com = np.asarray(ndimage.center_of_mass(fraction, components, int(index) + 1))
            box = ndimage.find_objects((components == index + 1).astype(np.int8))[0]
            lo = grid.origin + np.array([s.start for s in box]) * grid.step
            hi = grid.origin + np.array([s.stop - 1 for s in box]) * grid.step
            mass_centre = grid.origin + com * grid.step
            found.append({"centre": mass_centre, "lo": lo, "hi": hi, "ml": float(sizes[index]) / 1000})
    if not found:
        found = [{"centre": centre, "lo": centre - 40, "hi": centre + 40, "ml": 0.0}]
    # Kidneys either side of the spine: two components -> the spine between them; one -> medial to it.
    if len(found) == 2 and abs(found[0]["centre"][0] - found[1]["centre"][0]) > 50:
        spine_x = float(np.mean([k["centre"][0] for k in found]))
        kidney_y = float(np.mean([k["centre"][1] for k in found]))
    else:
        k = found[0]["centre"]
        medial = np.sign(centre[0] - k[0])
        spine_x = float(k[0] + medial * 72) if abs(centre[0] - k[0]) > 30 else float(k[0])
        kidney_y = float(k[1]) if abs(centre[0] - k[0]) > 30 else float(k[1] - 45)
    z_lo = float(min(k["lo"][2] for k in found))
    z_hi = float(max(k["hi"][2] for k in found))
    sides = {}
    for k in found:
        side = "right" if k["centre"][0] > spine_x else "left"  # RAS: x grows toward the patient's right
        sides.setdefault(side, k)
    return {
        "extent": extent,
        "spine_x": spine_x,
        "kidney_y": kidney_y,
        "kidney_z": (z_lo, z_hi),
        "sides": sides,
        "components": found,
        "lateral": float(max(abs(k["hi"][0] - spine_x) for k in found) if found else 100.0),
        "lateral_lo": float(max(abs(k["lo"][0] - spine_x) for k in found) if found else 100.0),
        "anterior": float(max(k["hi"][1] for k in found)),
        "posterior": float(min(k["lo"][1] for k in found)),
    }


def paint_surroundings(c: Canvas, rng, p: dict, a: dict, fraction: np.ndarray) -> None:
    """Body, bones, vessels, organs and bowel on the coarse canvas."""
    from scipy import ndimage

    x, y, z = c.x, c.y, c.z
    sx, ky = a["spine_x"], a["kidney_y"]
    z_lo, z_hi = a["kidney_z"]
    kz = (z_lo + z_hi) / 2
    muscle, fat = p["muscle"], p["fat"]
    lateral = max(a["lateral"], a["lateral_lo"])

    # Vertebral column: body centre level with the kidneys (a little anterior), canal and spinous process behind.
    vy = ky + rng.uniform(0, 12)
    vrx, vry = rng.uniform(19, 25), rng.uniform(15, 19)
    period, phase = rng.uniform(30, 36), rng.uniform(0, 36)
    disc = (np.abs(((z - phase) % period) - period / 2) > period / 2 - rng.uniform(3, 5)).astype(np.float32)

    # Body outline: flatter at the back, posterior skin 85-115 mm behind the vertebral body.
    y_post = vy - rng.uniform(85, 115)
    half_w = max(min(rng.uniform(0.32, 0.45) * a["extent"][0], 200.0), lateral + rng.uniform(35, 60))
    depth = max(rng.uniform(190, 290), a["anterior"] - y_post + rng.uniform(50, 110))
    wobble = 1 + 0.05 * np.sin(2 * np.pi * z / rng.uniform(300, 600) + rng.uniform(0, 6.3))
    bx = sx + rng.uniform(-6, 6)
    by = y_post + depth / 2
    half_w, half_d = half_w * wobble, depth / 2 * wobble
    power = rng.uniform(2.0, 2.6)

    def body(shrink_mm):
        q = (np.abs(x - bx) / (half_w - shrink_mm)) ** power + (np.abs(y - by) / (half_d - shrink_mm)) ** power
        return c.weight((q ** (1 / power) - 1.0) * (half_d - shrink_mm))

    skin_fat = rng.uniform(8, 40)
    wall = rng.uniform(8, 16)
    c.paint(body(0), 30)  # skin
    c.paint(body(2), fat - 5)
    c.paint(body(2 + skin_fat), muscle)
    cavity = body(2 + skin_fat + wall)
    c.paint(cavity, fat + rng.uniform(0, 15))  # visceral fat
    inside_wall = body(2 + skin_fat)
    kidneys_near = np.clip(ndimage.maximum_filter(fraction, size=3) * 3, 0, 1)  # organs touch, never overlap
    organ_room = cavity * (1 - kidneys_near)

    # Back muscles and psoas; the psoas grows from the kidneys' upper third downwards.
    for side in (-1, 1):
        back = c.ellipsoid((sx + side * 28, vy - 50, 0), (rng.uniform(24, 30), rng.uniform(16, 22), 1e5)) * inside_wall
        c.paint(back * (1 - kidneys_near), muscle + rng.uniform(-5, 5))
        psoas_r = np.clip(4 + (z_hi - 20 - z) * 0.14, 0, 28)
        radii = np.maximum(psoas_r, 1e-3), np.maximum(psoas_r * 0.9, 1e-3)
        w = c.tube(sx + side * (vrx + psoas_r * 0.7), vy + 2, *radii)
        c.paint(w * (psoas_r > 2), muscle)
    # Ribs above the kidneys' middle: oblique arcs inside the muscle wall, one every 25-35 mm.
    rib_period, rib_phase = rng.uniform(25, 35), rng.uniform(0, 35)
    angle = np.arctan2(y - by, x - bx)
    ring_q = ((x - bx) / (half_w - skin_fat - wall / 2)) ** 2 + ((y - by) / (half_d - skin_fat - wall / 2)) ** 2
    ring = c.weight((np.abs(np.sqrt(ring_q) - 1.0) * (half_d - skin_fat) - rng.uniform(2.5, 4)))
    oblique = np.clip(rng.uniform(4, 6) - np.abs(((z - rib_phase + 40 * np.sin(angle)) % rib_period) - 8), 0, 3) / 3
    ribs = ring * oblique * (z > kz - rng.uniform(0, 30)) * (np.sin(angle) < 0.5)
    c.paint(ribs, rng.uniform(350, 700))
    # Iliac wings well below the kidneys.
    pelvis_z = z_lo - rng.uniform(50, 90)
    for side in (-1, 1):
        ilium = c.ellipsoid((sx + side * (half_w * 0.55), vy - 10, pelvis_z - 80), (45, 14, 80))
        c.paint(ilium, p["bone"] * 0.7)
        c.paint(c.ellipsoid((sx + side * (half_w * 0.55), vy - 10, pelvis_z - 80), (38, 8, 74)), p["marrow"])

    body_w = c.tube(sx, vy, vrx, vry)
    c.paint(body_w, p["bone"])
    c.paint(c.tube(sx, vy, vrx - 2.5, vry - 2.5), p["marrow"])
    c.paint(c.tube(sx, vy, vrx + 1.5, vry + 1.5) * disc, 85)  # intervertebral discs
    canal_y = vy - vry - 9
    posterior_hu = 0.5 * (p["bone"] + p["marrow"])
    c.paint(c.tube(sx, canal_y, 13, 11.5), posterior_hu)  # lamina and pedicles around the canal
    c.paint(c.tube(sx, canal_y, 8.5, 7.5), 20)  # spinal canal (CSF)
    spinous = c.weight(np.maximum(np.abs(x - sx) - 3.5, np.abs(y - (canal_y - 20)) - 10))
    c.paint(spinous * (((z - phase) % period) > period * 0.3), posterior_hu)
    transverse = c.weight(np.maximum(np.abs(x - sx) - rng.uniform(28, 36), np.abs(y - canal_y - 4) - 3))
    c.paint(transverse * (((z - phase) % period) > period * 0.65), posterior_hu)

    # Aorta (left of the midline) and IVC (right) in front of the spine; renal arteries and veins to the kidneys.
    ar = rng.uniform(9, 13)
    ax_, ay = sx - rng.uniform(5, 15), vy + vry + ar + rng.uniform(1, 5)
    ix, iy = sx + rng.uniform(20, 30), vy + vry + rng.uniform(6, 12)
    ivc_hu = p["aorta"] * p["ivc_fraction"]
    c.paint(c.tube(ax_, ay, ar, ar), p["aorta"])
    c.paint(c.tube(ix, iy, rng.uniform(11, 15), rng.uniform(7, 10)), ivc_hu)
    for side, kidney in a["sides"].items():
        k = kidney["centre"]
        hilum = (k[0] + (sx - k[0]) * 0.25, k[1] + 5, k[2])
        c.paint(c.segment((ax_, ay, k[2] + 8), hilum, rng.uniform(2.5, 4)), p["aorta"])
        c.paint(
            c.segment(
                (ix if side == "right" else ax_, iy + (0 if side == "right" else 16), k[2]), hilum, rng.uniform(4, 6)
            ),
            ivc_hu,
        )

    # Liver on the right and spleen on the left, touching the upper poles; mirrored where a kidney is missing.
    def kidney_at(side):
        if side in a["sides"]:
            return a["sides"][side]["centre"], a["sides"][side]["hi"][2]
        other = next(iter(a["sides"].values()))["centre"]
        return np.array([2 * sx - other[0], other[1], other[2]]), z_hi

    rk, rk_top = kidney_at("right")
    lk, lk_top = kidney_at("left")
    liver_hu = p["liver"]
    liver_c = (rk[0] + rng.uniform(10, 35), rk[1] + rng.uniform(30, 55), rk_top + rng.uniform(30, 70))
    liver_r = (rng.uniform(80, 100), rng.uniform(70, 95), rng.uniform(90, 130))
    lobes = smooth_noise(rng, c.grid.shape, 6.0) * rng.uniform(6, 14)
    liver = c.ellipsoid(liver_c, liver_r, lobes) * organ_room
    liver *= c.weight(-(x - (sx - rng.uniform(30, 60))))  # stays mostly right of the midline
    texture = smooth_noise(rng, c.grid.shape, 2.0)
    vessels = (np.abs(smooth_noise(rng, c.grid.shape, 1.5)) < 0.15).astype(np.float32)
    c.paint(liver, liver_hu + 6 * texture + vessels * rng.uniform(-25, 60))
    left_edge = a["sides"]["left"]["lo"][0] if "left" in a["sides"] else lk[0] - 30
    spleen_c = (left_edge - rng.uniform(0, 15), lk[1] - rng.uniform(0, 20), lk_top + rng.uniform(15, 45))
    spleen_r = (rng.uniform(22, 32), rng.uniform(40, 55), rng.uniform(45, 65))
    spleen_hu = min(110.0, liver_hu + p["spleen_extra"])
    c.paint(c.ellipsoid(spleen_c, spleen_r, lobes * 0.5) * organ_room, spleen_hu + 4 * texture)
    if rng.random() < 0.6:  # gallbladder: a water-density decoy under the liver
        gb = (liver_c[0] - rng.uniform(10, 40), liver_c[1] + liver_r[1] * 0.6, liver_c[2] - liver_r[2] * 0.6)
        gb_r = (rng.uniform(12, 20), rng.uniform(12, 20), rng.uniform(25, 40))
        c.paint(c.ellipsoid(gb, gb_r) * liver, rng.uniform(0, 25))
    # Pancreas: an enhancing band from in front of the aorta toward the spleen.
    pz = kz + rng.uniform(0, 40)
    pancreas = c.segment((ix + 15, ay + 30, pz - 10), (spleen_c[0] + 10, spleen_c[1] + 25, pz + 15), rng.uniform(6, 10))
    c.paint(pancreas * organ_room, rng.uniform(80, 120))

    # Bowel: loops of a random field in the rest of the cavity, with wall, gas, fluid and perhaps oral contrast.
    taken = (c.hu > fat + 20) | (c.hu < -300)
    free = cavity * (~taken) * (fraction < 0.05) * (y > vy - 10)
    loops = smooth_noise(rng, c.grid.shape, 3.0)
    level = rng.uniform(0.1, 0.7)
    bowel = np.clip((loops - level) / 0.25, 0, 1) * np.clip(free * 2 - 1, 0, 1)
    lumen = np.clip((loops - level - 0.35) / 0.25, 0, 1) * np.clip(free * 2 - 1, 0, 1)
    content = smooth_noise(rng, c.grid.shape, 1.5)
    c.paint(bowel, muscle - 5)
    gas = lumen * np.clip((content + 0.01 * (y - by) - rng.uniform(0.9, 1.4)) / 0.3, 0, 1)
    fluid = lumen * np.clip((content + 0.4) / 0.3, 0, 1)
    c.paint(lumen, -40 + 40 * content)  # faeces, mottled
    c.paint(fluid, rng.uniform(0, 25) + 10 * content)
    if p["oral_contrast"] is not None:
        c.paint(lumen * np.clip((content - 0.3) / 0.3, 0, 1), p["oral_contrast"])
    c.paint(gas, -950)

    # Perirenal fat where the kidneys are: the full-resolution kidneys go in over it.
    c.paint(np.clip((fraction - 0.3) * 2, 0, 1), fat)

    # The table under the patient.
    gap = rng.uniform(10, 40)
    table_y = y_post - gap
    curve = 0.0006 * (x - bx) ** 2
    c.paint(c.weight(np.abs(y - table_y + curve) - 3), rng.uniform(-300, 100))


def paint_kidneys(image: np.ndarray, lab: np.ndarray, spacing, rng, p: dict) -> None:
    """Cortex, medulla, collecting system, tumours and cysts at full resolution, box by box; then partial volume."""
    from scipy import ndimage

    fg = lab > 0
    if not fg.any():
        return
    margin = np.ceil(6.0 / spacing).astype(int)
    # Boxes around the labelled structures, found on a subsampled mask (cheap), merged when they overlap.
    step = np.maximum(1, (4.0 / spacing).astype(int))
    sub = fg[:: step[0], :: step[1], :: step[2]]
    if not sub.any():
        sub = block_mean(fg, step) > 0
    sub_components, _ = ndimage.label(ndimage.binary_dilation(sub, iterations=2))
    boxes = []
    for box in ndimage.find_objects(sub_components):
        lo = np.array([s.start for s in box]) * step - margin
        hi = (np.array([s.stop for s in box]) + 1) * step + margin
        lo, hi = np.maximum(lo, 0), np.minimum(hi, lab.shape)
        boxes.append(tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)))
    thick = p["slice_thickness_mm"]
    sigma = (0.6, 0.6, max(0.3, 0.42 * thick / spacing[2]))  # voxels: in-plane blur and slice profile
    for number, box in enumerate(boxes):
        sub_lab = np.ascontiguousarray(lab[box])
        if not (sub_lab > 0).any():
            continue
        patch = image[box].copy()
        kidney = sub_lab == 1
        if kidney.any():
            depth = ndimage.distance_transform_edt(kidney, sampling=spacing)
            columns = smooth_noise(rng, kidney.shape, max(1.0, 4.0 / float(np.mean(spacing))))
            cortex_mm = p["cortex_mm"] * np.clip(1 + 0.35 * columns + 0.6 * np.maximum(columns - 1.0, 0) * 3, 0.5, 4)
            med = np.clip((depth - cortex_mm) / 1.2 + 0.5, 0, 1)
            hu = p["cortex"] + med * (p["medulla"] - p["cortex"]) + 6 * columns
            deepest = np.quantile(depth[kidney], 0.97) if kidney.sum() > 100 else np.inf
            pelvis = np.clip((depth - deepest * 0.8) / 1.5, 0, 1)
            hu += pelvis * (p["pelvis"] - hu)
            patch[kidney] = hu[kidney]
        tumours, n_tumours = ndimage.label(sub_lab == 2)
        for t in range(1, n_tumours + 1):
            paint_tumour(patch, tumours == t, spacing, rng, p)
        cysts, n_cysts = ndimage.label(sub_lab == 3)
        for t in range(1, n_cysts + 1):
            patch[cysts == t] = float(np.clip(p["cyst"] + rng.normal(0, 4), 0, 25))
        image[box] = ndimage.gaussian_filter(patch, sigma, mode="nearest")
    log.debug("kidney boxes: %d", len(boxes))


def paint_tumour(patch: np.ndarray, mask: np.ndarray, spacing, rng, p: dict) -> None:
    from scipy import ndimage

    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    m = mask[box]
    texture = smooth_noise(rng, m.shape, max(1.0, float(rng.uniform(1.5, 3.5)) / float(np.mean(spacing))))
    kind = p["tumour_kind"] if rng.random() < 0.8 else str(rng.choice(["hypo", "iso", "heterogeneous"]))
    if kind == "hypo":
        hu = rng.uniform(30, 90) + rng.uniform(8, 20) * texture
    elif kind == "iso":
        hu = p["cortex"] + rng.uniform(-35, 10) + rng.uniform(12, 25) * texture
    else:
        depth = ndimage.distance_transform_edt(np.pad(m, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        rim = rng.uniform(110, 200) + rng.uniform(20, 40) * texture
        core_at = float(depth.max()) * rng.uniform(0.35, 0.6)
        necrosis = np.clip((depth - core_at + 2.5 * texture) / 2.0, 0, 1)
        hu = rim + necrosis * (rng.uniform(10, 40) + 8 * texture - rim)
    if rng.random() < 0.1 and m.sum() > 200:  # a few calcifications
        specks = texture > np.quantile(texture[m], 0.995)
        hu = np.where(specks, rng.uniform(300, 600), hu)
    region = patch[box]
    region[m] = hu[m]


def add_scanner_effects(image: np.ndarray, spacing, rng, p: dict, a: dict) -> None:
    """Streaks, correlated noise, offset, the HU range scanners reconstruct to, and the circular field of view."""
    from scipy import ndimage

    nx, ny, nz = image.shape
    x = (np.arange(nx, dtype=np.float32) * spacing[0])[:, None]
    y = (np.arange(ny, dtype=np.float32) * spacing[1])[None, :]
    # Beam hardening: dark and bright rays from the vertebral body, the same in every slice but for amplitude.
    dx, dy = x - a["spine_x"], y - (a["kidney_y"] + 5)
    r = np.sqrt(dx**2 + dy**2)
    theta = np.arctan2(dy, dx)
    streak = np.zeros((nx, ny), dtype=np.float32)
    for _ in range(int(rng.integers(3, 8))):
        angle, width = rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(1.0, 3.0))
        gap = np.angle(np.exp(1j * (theta - angle)))
        streak += rng.choice([-1.0, -1.0, 0.6]) * np.exp(-0.5 * (gap / width) ** 2)
    streak *= p["streaks"] * np.exp(-r / 90.0) * (r > 20)
    amplitude = (0.5 + 0.5 * rng.random(nz)).astype(np.float32)
    amplitude = ndimage.uniform_filter1d(amplitude, max(1, int(5 / spacing[2])))
    for i in range(nx):  # row by row: no full-size temporary
        image[i] += streak[i, :, None] * amplitude[None, :]
    # Correlated noise: white noise through a 3-tap binomial filter in-plane (std 0.375 of the white noise's).
    noise_rng = np.random.default_rng(rng.integers(2**63))
    scale = np.float32(p["noise"] / 0.375)
    for k in range(0, nz, 16):  # 16 slices at a time keeps the memory low
        white = noise_rng.standard_normal((nx, ny, min(16, nz - k)), dtype=np.float32)
        image[:, :, k : k + 16] += _binomial(_binomial(white, 0), 1) * scale
    image += p["offset"]
    np.clip(image, -1024, 3071, out=image)
    if p["fov_padding"] is not None:
        radius = 0.5 * min(nx * spacing[0], ny * spacing[1])
        cx, cy = nx * spacing[0] / 2, ny * spacing[1] / 2
        outside = ((x - cx) ** 2 + (y - cy) ** 2) > radius**2
        image[outside] = p["fov_padding"]
    np.rint(image, out=image)


def _binomial(a: np.ndarray, axis: int) -> np.ndarray:
    """The [1/4, 1/2, 1/4] filter along ``axis`` (edges: the missing neighbour counts as zero)."""
    out = a * np.float32(0.5)
    lo = [slice(None)] * a.ndim
    hi = [slice(None)] * a.ndim
    lo[axis], hi[axis] = slice(0, -1), slice(1, None)
    out[tuple(hi)] += a[tuple(lo)] * np.float32(0.25)
    out[tuple(lo)] += a[tuple(hi)] * np.float32(0.25)
    return out
