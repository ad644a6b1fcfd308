"""A synthetic VOC-format data set: cluttered images of outlined shapes, drawn reproducibly by seed."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from yolov2.errors import InputError

log = logging.getLogger(__name__)

# A class is decided by outline alone; colours are drawn from one pool shared by every class.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent",
)  # fmt: skip


# Bump when the drawing changes, so a cached data set of the old generator is not taken as current.
GENERATOR_VERSION = 1
MARKER = ".complete"


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that decides the bytes of a synthetic data set; stored in its marker file."""

    num_trainval: int
    num_test: int
    image_size: tuple[int, int]  # side range in pixels, width and height drawn independently
    seed: int
    classes: tuple[str, ...]
    objects_per_image: tuple[int, int]
    object_size: tuple[float, float]  # object side as a fraction of the image's shorter side
    max_aspect: float  # width / height drawn log-uniformly in [1 / max_aspect, max_aspect]
    max_rotation_deg: float
    clutter: int  # mean number of distractor strokes and blobs per image
    noise: float  # std of per-pixel Gaussian noise, in grey levels
    empty_fraction: float  # fraction of images drawn without objects
    min_visible: float  # objects with less of their area visible are left unannotated
    difficult_visible: float  # objects with less visible are marked difficult
    difficult_min_px: int  # objects whose visible box is smaller than this are difficult
    min_contrast: float  # least mean RGB distance, in grey levels, between object and background
    jpeg_quality: int
    version: int = GENERATOR_VERSION
    num_val: int | None = None  # trainval's last images are val (None: its odd ones)


def make_synthetic_voc(
    root: Path,
    *,
    num_trainval: int = 1600,
    num_val: int | None = None,
    num_test: int = 400,
    image_size: int | tuple[int, int] = (160, 320),
    seed: int = 0,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    objects_per_image: tuple[int, int] = (1, 6),
    object_size: tuple[float, float] = (0.08, 0.6),
    max_aspect: float = 1.6,
    max_rotation_deg: float = 20.0,
    clutter: int = 10,
    noise: float = 8.0,
    empty_fraction: float = 0.02,
    min_visible: float = 0.3,
    difficult_visible: float = 0.55,
    difficult_min_px: int = 12,
    min_contrast: float = 40.0,
    jpeg_quality: int = 90,
    workers: int = 2,
) -> Path:
    """Write (or reuse) a synthetic VOCdevkit at `root` holding VOC2007 trainval/train/val/test.

    train and val split trainval as VOC's do: val is its last `num_val` images, or (None) every
    other one.

    `root` is the VOCdevkit folder itself: `read_voc(root, [("2007", "trainval")], classes)` reads
    it. The set is drawn into a temporary sibling folder and renamed into place at the end, so an
    interrupted run leaves nothing at `root`. A finished set holds a `.complete` marker with its
    parameters: asking again with the same parameters returns it at once (a cache, safe for
    concurrent callers); asking with other parameters is an InputError, because silently
    regenerating would change data a finished experiment was measured on. The same seed gives the
    same bytes however many workers draw it.
    """
    sides = (image_size, image_size) if isinstance(image_size, int) else image_size
    spec = SyntheticSpec(
        num_trainval, num_test, (int(sides[0]), int(sides[1])), seed, tuple(classes),
        (int(objects_per_image[0]), int(objects_per_image[1])),
        (float(object_size[0]), float(object_size[1])), max_aspect, max_rotation_deg, clutter,
        noise, empty_fraction, min_visible, difficult_visible, difficult_min_px, min_contrast,
        jpeg_quality, num_val=num_val,
    )  # fmt: skip
    _check_spec(spec)
    root = Path(root)
    if _cached(root, spec):
        return root
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_synthetic(tmp, spec, workers)
        try:
            tmp.rename(root)
        except OSError:
            if not _cached(root, spec):  # a concurrent caller finished first with the same set
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_spec(spec: SyntheticSpec) -> None:
    unknown = [c for c in spec.classes if c not in SYNTHETIC_CLASSES]
    if unknown or not spec.classes:
        raise InputError(f"synthetic classes {unknown or '[]'} are not among {SYNTHETIC_CLASSES}")
    lo, hi = spec.image_size
    if not 32 <= lo <= hi:
        raise InputError(f"synthetic image_size {spec.image_size} must be 32 <= min <= max")
    if not 0 < spec.object_size[0] <= spec.object_size[1] <= 1:
        raise InputError(f"synthetic object_size {spec.object_size} must be 0 < min <= max <= 1")
    if not 0 <= spec.objects_per_image[0] <= spec.objects_per_image[1]:
        raise InputError(f"synthetic objects_per_image {spec.objects_per_image} is not a range")
    if spec.num_val is not None and not 0 < spec.num_val < spec.num_trainval:
        raise InputError(f"synthetic num_val {spec.num_val} must be in [1, num_trainval)")


def _cached(root: Path, spec: SyntheticSpec) -> bool:
    marker = root / MARKER
    if not root.exists():
        return False
    if not marker.is_file():
        raise InputError(f"{root}: exists but is not a finished synthetic data set (no {MARKER})")
    stored = json.loads(marker.read_text())
    wanted = json.loads(json.dumps(asdict(spec)))
    if stored != wanted:
        changed = sorted(k for k in wanted if stored.get(k) != wanted[k])
        raise InputError(
            f"{marker}: data set was generated with other parameters ({', '.join(changed)}); "
            "delete it or choose another folder"
        )
    return True


def _write_synthetic(tmp: Path, spec: SyntheticSpec, workers: int) -> None:
    year_dir = tmp / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True)
    total = spec.num_trainval + spec.num_test
    start = time.perf_counter()
    # Threads, not processes: numpy, PIL's drawing and its JPEG encoder release the GIL for much of
    # the work, and threads need no torch import per worker nor a picklable __main__ (Ray, stdin).
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        drawn = pool.map(lambda i: _draw_and_write(year_dir, spec, i), range(total))
        counts = list(tqdm(drawn, total=total, desc="synthetic VOC", unit="img", disable=None))
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, draw no more into a doomed folder
    _write_image_sets(year_dir, spec)
    (tmp / MARKER).write_text(json.dumps(asdict(spec), indent=1) + "\n")
    num_objects = sum(n for n, _ in counts)
    log.info(
        "synthetic VOC: %d images, %d objects (%d difficult) in %.1f s",
        total, num_objects, sum(d for _, d in counts), time.perf_counter() - start,
    )  # fmt: skip


def _write_image_sets(year_dir: Path, spec: SyntheticSpec) -> None:
    ids = [_image_id(i) for i in range(spec.num_trainval + spec.num_test)]
    trainval, test = ids[: spec.num_trainval], ids[spec.num_trainval :]
    if spec.num_val is None:
        train, val = trainval[0::2], trainval[1::2]
    else:
        train, val = trainval[: -spec.num_val], trainval[-spec.num_val :]
    sets = {"trainval": trainval, "train": train, "val": val, "test": test}
    for name, members in sets.items():
        text = "".join(f"{m}\n" for m in members)
        (year_dir / "ImageSets" / "Main" / f"{name}.txt").write_text(text)


def _image_id(index: int) -> str:
    return f"{index + 1:06d}"  # VOC2007 numbering: 000001, 000002, ...


def _draw_and_write(year_dir: Path, spec: SyntheticSpec, index: int) -> tuple[int, int]:
    """Draw image `index` from its own seed, write its JPEG and XML; return (objects, difficult)."""
    rng = np.random.default_rng([spec.seed, index])
    image, objects = draw_synthetic_image(rng, spec)
    image_id = _image_id(index)
    image.save(year_dir / "JPEGImages" / f"{image_id}.jpg", quality=spec.jpeg_quality)
    xml = _voc_xml(image_id, image.size, objects)
    (year_dir / "Annotations" / f"{image_id}.xml").write_text(xml)
    return len(objects), sum(o.difficult for o in objects)


@dataclass(frozen=True)
class SyntheticObject:
    name: str
    box: tuple[int, int, int, int]  # VOC 1-based inclusive xmin, ymin, xmax, ymax
    truncated: bool
    difficult: bool


def _voc_xml(image_id: str, size: tuple[int, int], objects: Sequence[SyntheticObject]) -> str:
    parts = [
        "<annotation>\n\t<folder>VOC2007</folder>\n",
        f"\t<filename>{image_id}.jpg</filename>\n",
        "\t<source>\n\t\t<database>prune-search synthetic</database>\n\t</source>\n",
        f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n",
        "\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n",
    ]
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        parts.append(
            f"\t<object>\n\t\t<name>{obj.name}</name>\n\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{int(obj.truncated)}</truncated>\n"
            f"\t\t<difficult>{int(obj.difficult)}</difficult>\n"
            f"\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n"
            f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts)


def draw_synthetic_image(
    rng: np.random.Generator, spec: SyntheticSpec
) -> tuple[Image.Image, list[SyntheticObject]]:
    """One cluttered image and its annotations, drawn from `rng` alone."""
    width, height = (int(rng.integers(spec.image_size[0], spec.image_size[1] + 1)) for _ in "wh")
    canvas = _background(rng, width, height)
    _draw_clutter(rng, canvas, spec.clutter)
    pixels = np.array(canvas)
    owner = np.zeros((height, width), np.int16)  # which object shows at each pixel, 0 = none
    placed: list[tuple[str, int, int]] = []  # (class, mask area in pixels, of it in the frame)
    count = (
        0
        if rng.random() < spec.empty_fraction
        else int(rng.integers(*spec.objects_per_image, endpoint=True))
    )
    for k in range(1, count + 1):
        name = spec.classes[int(rng.integers(len(spec.classes)))]
        placed.append((name, *_paste_object(rng, spec, name, pixels, owner, k=k)))
    noisy = rng.standard_normal(pixels.shape, dtype=np.float32) * spec.noise + pixels
    image = Image.fromarray(np.clip(noisy, 0, 255, out=noisy).astype(np.uint8))
    return image, _annotate(spec, owner, placed)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    # A smooth random colour field (a few control points upsampled) with an optional stripe texture.
    grid = rng.integers(
        0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3), dtype=np.uint8
    )
    field = np.asarray(
        Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC), np.float32
    )
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
        yy, xx = np.mgrid[0:height, 0:width]
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        field += rng.uniform(10, 40) * stripes[..., None]
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, 3))
    return r, g, b


def _draw_clutter(rng: np.random.Generator, canvas: Image.Image, mean_count: int) -> None:
    """Distractors that belong to no class: lines, scribbles, arcs, irregular blobs and specks."""
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    for _ in range(int(rng.poisson(mean_count))):
        kind = rng.integers(5)
        colour = _random_colour(rng)
        x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        reach = float(rng.uniform(0.05, 0.3)) * min(width, height)
        if kind == 0:  # straight line
            end = (x + rng.normal(0, 2 * reach), y + rng.normal(0, 2 * reach))
            draw.line([(x, y), end], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:  # scribble
            pts = [
                (x + rng.normal(0, reach), y + rng.normal(0, reach))
                for _ in range(int(rng.integers(3, 8)))
            ]
            draw.line(pts, fill=colour, width=int(rng.integers(1, 4)), joint="curve")
        elif kind == 2:  # arc: a piece of a ring or crescent outline, too thin to be either
            start = float(rng.uniform(0, 360))
            bbox = (x - reach, y - reach * rng.uniform(0.6, 1.4), x + reach, y + reach)
            draw.arc(
                bbox,
                start,
                start + float(rng.uniform(40, 220)),
                fill=colour,
                width=int(rng.integers(1, 3)),
            )
        elif kind == 3:  # irregular blob with many uneven vertices, neither polygon nor circle
            # Evenly spread angles: random gaps would leave long straight edges, i.e. polygons.
            n = int(rng.integers(9, 16))
            angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
            radii = 0.7 * reach * rng.uniform(0.35, 1.0, n)
            draw.polygon(
                list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles), strict=True)),
                fill=colour,
            )
        else:  # specks far below the smallest object
            for _ in range(int(rng.integers(3, 10))):
                sx, sy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.5, 2.5)
                draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=_random_colour(rng))


def _unit_circle(
    n: int, radius: float = 1.0, phase: float = 0.0, centre: tuple[float, float] = (0, 0)
) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1)


def _shape_polygons(rng: np.random.Generator, name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Outline of a class in the unit square [-1, 1]^2, and the holes cut out of it."""
    up = -np.pi / 2  # image y points down, so -90 degrees is the top
    if name == "circle":
        return _unit_circle(64), []
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), []
    if name == "triangle":
        return np.array([[0, -1], [1, 1], [-1, 1]], float), []
    if name == "hexagon":
        return _unit_circle(6, phase=float(rng.choice([0, np.pi / 6]))), []
    if name == "star":
        inner = float(rng.uniform(0.38, 0.5))
        outer, pts = _unit_circle(5, phase=up), _unit_circle(5, inner, phase=up + np.pi / 5)
        return np.stack([outer, pts], axis=1).reshape(-1, 2), []
    if name == "cross":
        t = float(rng.uniform(0.25, 0.4))
        arm = [
            [-t, -1],
            [t, -1],
            [t, -t],
            [1, -t],
            [1, t],
            [t, t],
            [t, 1],
            [-t, 1],
            [-t, t],
            [-1, t],
            [-1, -t],
            [-t, -t],
        ]
        return np.array(arm, float), []
    if name == "ring":
        return _unit_circle(64), [_unit_circle(64, float(rng.uniform(0.45, 0.7)))]
    if name == "crescent":
        angle = rng.uniform(0, 2 * np.pi)
        shift = float(rng.uniform(0.35, 0.6))
        cut = (shift * np.cos(angle), shift * np.sin(angle))
        return _unit_circle(64), [_unit_circle(64, float(rng.uniform(0.8, 1.0)), centre=cut)]
    raise InputError(f"no drawing for synthetic class {name!r}")


def _object_mask(
    rng: np.random.Generator, spec: SyntheticSpec, name: str, side: float
) -> tuple[Image.Image, np.ndarray]:
    """The object's mask at its size and rotation, and its top-left offset from its centre."""
    aspect = math.exp(rng.uniform(-1, 1) * math.log(spec.max_aspect))
    half = np.array([side * math.sqrt(aspect), side / math.sqrt(aspect)]) / 2
    theta = math.radians(rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    outline, holes = _shape_polygons(rng, name)
    polys = [(p * half) @ rot.T for p in [outline, *holes]]
    low, high = np.floor(polys[0].min(0)), np.ceil(polys[0].max(0))
    mask = Image.new("L", (int(high[0] - low[0]) + 1, int(high[1] - low[1]) + 1), 0)
    draw = ImageDraw.Draw(mask)
    for i, poly in enumerate(polys):
        draw.polygon([tuple(v) for v in (poly - low).tolist()], fill=0 if i else 255)
    return mask, low


def _paste_object(
    rng: np.random.Generator,
    spec: SyntheticSpec,
    name: str,
    pixels: np.ndarray,
    owner: np.ndarray,
    *,
    k: int,
) -> tuple[int, int]:
    """Draw object k over `pixels` and `owner`; return its mask's area, and how much is in frame."""
    height, width = owner.shape
    short = min(width, height)
    lo, hi = spec.object_size
    side = short * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    mask_img, low = _object_mask(rng, spec, name, side)
    mask = np.asarray(mask_img) > 127
    # The centre may sit up to a quarter of the object outside the frame: truncated objects.
    cx = rng.uniform(-0.25 * side, width + 0.25 * side)
    cy = rng.uniform(-0.25 * side, height + 0.25 * side)
    x0, y0 = round(cx + low[0]), round(cy + low[1])
    ys, xs = (
        slice(max(0, y0), min(height, y0 + mask.shape[0])),
        slice(max(0, x0), min(width, x0 + mask.shape[1])),
    )
    area = int(mask.sum())
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return area, 0
    inside = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    region = pixels[ys, xs]
    colour = _contrasting_colour(rng, region[inside], spec.min_contrast)
    shade = _shading(rng, inside.shape)
    region[inside] = np.clip(colour + shade[inside], 0, 255).astype(np.uint8)
    owner[ys, xs][inside] = k
    return area, int(inside.sum())


def _contrasting_colour(
    rng: np.random.Generator, behind: np.ndarray, min_contrast: float
) -> np.ndarray:
    # An object the colour of its background is unlearnable noise, not difficulty: redraw a few times.
    mean = behind.reshape(-1, 3).mean(0) if behind.size else np.full(3, 128.0)
    colour = rng.integers(0, 256, 3).astype(np.float32)
    for _ in range(10):
        if np.abs(colour - mean).mean() >= min_contrast:
            break
        colour = rng.integers(0, 256, 3).astype(np.float32)
    return colour


def _shading(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # A linear light gradient across the object, so fills are not flat.
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(shape)
    shade: np.ndarray = (rng.uniform(-40, 40) * ramp)[..., None]
    return shade


def _annotate(
    spec: SyntheticSpec, owner: np.ndarray, placed: Sequence[tuple[str, int, int]]
) -> list[SyntheticObject]:
    """Boxes of what stays visible; mostly hidden objects are dropped, partly hidden are difficult.

    As in VOC, being cut by the frame (truncated) alone does not make an object difficult: only
    being small or hidden behind other objects does.
    """
    objects = []
    for k, (name, area, in_frame) in enumerate(placed, start=1):
        ys, xs = np.nonzero(owner == k)
        if len(xs) < spec.min_visible * area:
            continue
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        small = min(box[2] - box[0], box[3] - box[1]) + 1 < spec.difficult_min_px
        occluded = len(xs) < spec.difficult_visible * in_frame
        objects.append(SyntheticObject(name, box, in_frame < area, small or occluded))
    return objects
