"""The study's two visualisations, boxes and 3D weights before vs after pruning, and `predict`'s boxes.

Figures are plain `matplotlib.figure.Figure` objects rendered by Agg, never pyplot: no display is
needed, no global figure registry keeps them alive, and a figure is freed as soon as it is saved.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

from yolov2.boxes import ImageDetections
from yolov2.data import load_image
from yolov2.engine import detect
from yolov2.errors import InputError
from yolov2.files import atomic_path
from yolov2.model import Reorg, Route, YOLOv2
from yolov2.prune import prunable_convs

DPI = 120
MAX_IMAGES = 5
MAX_SURFACE = 64  # rows and columns of a weight surface; with more, the quads are sub-pixel noise
DENSE_TITLE, PRUNED_TITLE = "dense (before pruning)", "pruned + finetuned"
# matplotlib ships DejaVu Sans; with a TrueType font the label size can follow the image size.
_FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


# --- boxes ---------------------------------------------------------------------------------------


def class_color(label: int) -> tuple[int, int, int]:
    """A bright colour that is the same for a class in every image; neighbours differ (golden-ratio hues)."""
    red, green, blue = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_detections(image: Tensor, detections: ImageDetections, classes: Sequence[str]) -> Tensor:
    """uint8 (3, H, W) with each box outlined in its class colour and labelled "name 0.87".

    Line width and font size grow with the image, so labels read on a 64-pixel thumbnail and on a
    photograph alike. A label outside `classes` is shown by its number.
    """
    if len(detections.boxes) == 0:
        return image.clone()
    side = min(image.shape[-2:])
    labels = [int(label) for label in detections.labels.tolist()]
    names = [classes[i] if 0 <= i < len(classes) else str(i) for i in labels]
    texts = [f"{n} {float(s):.2f}" for n, s in zip(names, detections.scores.tolist(), strict=True)]
    colors = [class_color(label) for label in labels]
    font = str(_FONT) if _FONT.is_file() else None
    drawn: Tensor = draw_bounding_boxes(
        image,
        detections.boxes.detach().cpu().float(),
        labels=texts,
        colors=colors,
        width=max(1, round(side / 150)),
        font=font,
        font_size=max(8, round(side / 24)) if font else None,
        label_colors=[_text_color(color) for color in colors],
        fill_labels=True,
    )
    return drawn


def save_png(image: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 (3, H, W) image as PNG, atomically.

    PIL rather than torchvision.io.encode_png, deprecated since torchvision 0.29 (as in `load_image`).
    """
    pixels = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    target = Path(path)
    with atomic_path(target) as temporary:
        Image.fromarray(pixels).save(temporary, format="PNG")
    return target


def _save_figure(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    figure.clear()
    return path


# --- before vs after -----------------------------------------------------------------------------


def compare(
    dense: YOLOv2,
    pruned: YOLOv2,
    images: Sequence[Path],
    out_dir: Path,
    classes: Sequence[str],
    *,
    input_size: int | None = None,
    layer: int | None = None,
    conf_thresh: float = 0.25,
    letterbox: tuple[bool, bool] = (False, False),
) -> list[Path]:
    """Write boxes.png, weights_<layer>.png and layers.png into `out_dir`; return their paths.

    boxes.png: detections of the images (1 to 5), dense vs pruned side by side, each model's input
    letterboxed or not as `letterbox` (dense, pruned) says, as it was trained. weights_<layer>.png:
    3D surfaces of one prunable conv's |weights| before and after (default: the conv that lost the
    largest fraction of its weights). layers.png: kept filters and/or sparsity of every prunable conv.
    """
    if len(dense.conv_blocks()) != len(pruned.conv_blocks()):
        raise InputError(
            f"the pruned model has {len(pruned.conv_blocks())} convolutions, the dense one "
            f"{len(dense.conv_blocks())}: it is not a pruned copy of it"
        )
    if not 1 <= len(images) <= MAX_IMAGES:
        raise InputError(f"compare draws 1 to {MAX_IMAGES} images, got {len(images)}")
    convs = prunable_convs(dense.arch)
    if layer is None:
        layer = max(convs, key=lambda number: _change(dense, pruned, number))
    elif layer not in convs:
        raise InputError(f"layer {layer}: the prunable convolutions are 0..{convs[-1]}")
    out_dir = Path(out_dir)
    return [
        _save_figure(
            boxes_figure(
                dense,
                pruned,
                images,
                classes,
                input_size=input_size,
                conf_thresh=conf_thresh,
                letterbox=letterbox,
            ),
            out_dir / "boxes.png",
        ),
        _save_figure(weights_figure(dense, pruned, layer), out_dir / f"weights_{layer}.png"),
        _save_figure(layers_figure(dense, pruned), out_dir / "layers.png"),
    ]


def boxes_figure(
    dense: YOLOv2,
    pruned: YOLOv2,
    images: Sequence[Path],
    classes: Sequence[str],
    *,
    input_size: int | None = None,
    conf_thresh: float = 0.25,
    letterbox: tuple[bool, bool] = (False, False),
) -> Figure:
    """Visualisation 1: one row per image, the dense model's boxes left, the pruned model's right."""
    models = ((DENSE_TITLE, dense, letterbox[0]), (PRUNED_TITLE, pruned, letterbox[1]))
    columns = [
        (
            title,
            model,
            detect(model, images, input_size=input_size, conf_thresh=conf_thresh, letterbox=boxed),
        )
        for title, model, boxed in models
    ]
    pictures = [load_image(Path(path)) for path in images]
    panel_w = 4.5  # inches: two panels at DPI 120 make a figure about 1100 pixels wide
    # Drawn at the size it is shown, so lines and labels look alike on thumbnails and photographs.
    panel_px = round(panel_w * DPI)
    heights = [panel_w * float(p.shape[1]) / float(p.shape[2]) for p in pictures]
    figure = Figure(figsize=(2 * panel_w + 0.6, sum(heights) + 0.55 * len(pictures) + 0.9))
    grid = figure.add_gridspec(len(pictures), 2, height_ratios=heights)
    for row, (path, picture) in enumerate(zip(images, pictures, strict=True)):
        for column, (title, _, found) in enumerate(columns):
            axes = figure.add_subplot(grid[row, column])
            drawn = draw_detections(*_to_width(picture, found[row], panel_px), classes)
            axes.imshow(drawn.permute(1, 2, 0).numpy(), interpolation="antialiased")
            axes.set_xticks([])
            axes.set_yticks([])
            count = len(found[row].boxes)
            axes.set_xlabel(f"{count} detection{'' if count == 1 else 's'}", fontsize=9)
            if row == 0:
                axes.set_title(title, fontsize=12, fontweight="bold")
            if column == 0:
                axes.set_ylabel(Path(path).name, fontsize=9)
    figure.suptitle(
        f"Detections at confidence ≥ {conf_thresh:g}: {_size_text(dense)} → {_size_text(pruned)}",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return figure


def weights_figure(dense: YOLOv2, pruned: YOLOv2, layer: int) -> Figure:
    """Visualisation 2: |weights| of conv `layer` as 3D surfaces, before and after, on one z scale.

    A conv weight (out, in, kh, kw) is drawn as a matrix of out rows by in·kh·kw columns, evenly
    subsampled to at most 64 × 64. Filter pruning packs the kept filters to the front, so the
    "after" surface covers the kept part of the dense one's floor; weight pruning shows as flat zeros.
    """
    before = dense.conv_blocks()[layer].conv.weight.detach().cpu()
    after = pruned.conv_blocks()[layer].conv.weight.detach().cpu()
    if before.shape == after.shape:
        rows, cols = _subsample(before.shape[0]), _subsample(before[0].numel())
        parts = [(before, rows, cols), (after, rows, cols)]
    else:
        parts = [(w, _subsample(w.shape[0]), _subsample(w[0].numel())) for w in (before, after)]
    surfaces = [
        (w.flatten(1).abs()[r][:, c].double().numpy(), r.numpy(), c.numpy()) for w, r, c in parts
    ]
    z_max = max(float(z.max()) for z, _, _ in surfaces) or 1.0
    titles = [
        f"{DENSE_TITLE}\n{tuple(before.shape)}, {_zeros_text(before)}",
        f"{PRUNED_TITLE}\n{_kept_text(before, after)}, {_zeros_text(after)}",
    ]
    figure = Figure(figsize=(14, 6.4))
    figure.subplots_adjust(left=0.0, right=0.9, bottom=0.04, top=0.86, wspace=0.04)
    mappable = None
    for column, ((z, r, c), title) in enumerate(zip(surfaces, titles, strict=True)):
        axes = figure.add_subplot(1, 2, column + 1, projection="3d")
        x, y = np.meshgrid(c.astype(np.float64), r.astype(np.float64))
        mappable = axes.plot_surface(
            x,
            y,
            z,
            rstride=1,
            cstride=1,
            cmap="viridis",
            vmin=0.0,
            vmax=z_max,
            linewidth=0,
            antialiased=False,
        )
        axes.set_xlim(0, before[0].numel())
        axes.set_ylim(0, before.shape[0])
        axes.set_zlim(0, z_max)
        axes.set_xlabel("input weight (in · kh · kw)", fontsize=9)
        axes.set_ylabel("filter", fontsize=9)
        axes.set_zlabel("|w|", fontsize=9)
        axes.tick_params(labelsize=7)
        axes.view_init(elev=50, azim=-60)
        axes.set_title(title, fontsize=11)
    assert mappable is not None
    figure.colorbar(mappable, cax=figure.add_axes((0.92, 0.25, 0.012, 0.5)), label="|w|")
    figure.suptitle(f"Weights of conv {_conv_name(dense, layer)}", fontsize=13, fontweight="bold")
    return figure


def layers_figure(dense: YOLOv2, pruned: YOLOv2) -> Figure:
    """Per prunable conv: dense vs kept filters (filter pruning) and/or weight sparsity (weight pruning)."""
    convs = prunable_convs(dense.arch)
    names = [_conv_name(dense, number) for number in convs]
    dense_widths = [dense.arch.widths[n] for n in convs]
    kept_widths = [pruned.arch.widths[n] for n in convs]
    sparsity = [_zero_fraction(pruned.conv_blocks()[n].conv.weight) for n in convs]
    base = [_zero_fraction(dense.conv_blocks()[n].conv.weight) for n in convs]
    filtered = dense_widths != kept_widths
    weighted = any(s > b + 1e-6 for s, b in zip(sparsity, base, strict=True))
    charts = [c for c, on in (("filters", filtered or not weighted), ("sparsity", weighted)) if on]
    figure = Figure(figsize=(max(8.0, 0.42 * len(convs) + 2), 4.2 * len(charts) + 0.6))
    x = np.arange(len(convs))
    for row, chart in enumerate(charts):
        axes = figure.add_subplot(len(charts), 1, row + 1)
        if chart == "filters":
            axes.bar(x - 0.2, dense_widths, 0.4, label=DENSE_TITLE, color="#9aa7b8")
            axes.bar(x + 0.2, kept_widths, 0.4, label=PRUNED_TITLE, color="#d9534f")
            kept = sum(kept_widths) / sum(dense_widths)
            axes.set_title(f"Filters per conv ({kept:.0%} of all filters kept)", fontsize=12)
            axes.set_ylabel("filters (output channels)")
            axes.legend(fontsize=9)
        else:
            axes.bar(x, [100 * s for s in sparsity], 0.6, color="#5b8bd0")
            overall = _zero_fraction_all(pruned, convs)
            axes.set_title(f"Weight sparsity per conv ({overall:.1%} overall)", fontsize=12)
            axes.set_ylabel("zero weights (%)")
            axes.set_ylim(0, 100)
        axes.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
        axes.set_xlim(-0.7, len(convs) - 0.3)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{_size_text(dense)} → {_size_text(pruned)}", fontsize=11)
    figure.tight_layout()
    return figure


# --- helpers -------------------------------------------------------------------------------------


def _to_width(
    image: Tensor, detections: ImageDetections, width: int
) -> tuple[Tensor, ImageDetections]:
    scale = width / image.shape[-1]
    height = max(1, round(image.shape[-2] * scale))
    resized: Tensor = F.resize(image, [height, width], antialias=True)
    boxes = detections.boxes * torch.tensor([scale, height / image.shape[-2]] * 2)
    return resized, ImageDetections(boxes, detections.scores, detections.labels)


def _subsample(n: int) -> Tensor:
    indices: Tensor = torch.linspace(0, n - 1, min(n, MAX_SURFACE)).round().long().unique()
    return indices


def _zero_fraction(weight: Tensor) -> float:
    return float((weight.detach() == 0).float().mean())


def _zero_fraction_all(model: YOLOv2, convs: Sequence[int]) -> float:
    weights = [model.conv_blocks()[n].conv.weight.detach() for n in convs]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _change(dense: YOLOv2, pruned: YOLOv2, number: int) -> tuple[float, int]:
    """Fraction of the dense conv's weights that pruning removed or zeroed (to the percent), then size.

    Uniform ratios make many convs tie; the larger one has the more telling surface.
    """
    before = dense.conv_blocks()[number].conv.weight.detach()
    after = pruned.conv_blocks()[number].conv.weight.detach()
    removed = 1.0 - int((after != 0).sum()) / max(1, int((before != 0).sum()))
    return round(removed, 2), before.numel()


def _zeros_text(weight: Tensor) -> str:
    return f"{_zero_fraction(weight):.0%} zeros"


def _kept_text(before: Tensor, after: Tensor) -> str:
    if before.shape == after.shape:
        return str(tuple(after.shape))
    return (
        f"{after.shape[0]} of {before.shape[0]} filters, "
        f"{after.shape[1]} of {before.shape[1]} inputs kept (packed at the start)"
    )


def _conv_name(model: YOLOv2, number: int) -> str:
    """'c20 (passthrough)': the conv number, its kernel, and its role where the graph gives it one."""
    arch = model.arch
    index = arch.conv_indices[number]
    size = model.conv_blocks()[number].conv.kernel_size[0]
    following = arch.layers[index + 1] if index + 1 < len(arch.layers) else None
    previous = arch.layers[index - 1] if index else None
    if isinstance(following, Reorg):
        return f"c{number} (passthrough)"
    if isinstance(previous, Route) and len(previous.layers) > 1:
        return f"c{number} (concat)"
    return f"c{number} {size}×{size}"


def _size_text(model: YOLOv2) -> str:
    weights = [p.detach() for p in model.parameters()]
    total = sum(w.numel() for w in weights)
    nonzero = sum(int((w != 0).sum()) for w in weights)
    text = f"{total / 1e6:.2f} M params"
    return text if nonzero > 0.99 * total else f"{text} ({nonzero / 1e6:.2f} M non-zero)"
