"""Fixtures that write real VOCdevkit trees (XML and JPEG files) from a short Python description."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# One object: (name, xmin, ymin, xmax, ymax) or (name, xmin, ymin, xmax, ymax, difficult), VOC
# 1-based inclusive pixels as they appear in the XML.
VocObject = tuple[Any, ...]
WriteVocTree = Callable[..., Path]


def voc_xml(image_id: str, width: int, height: int, objects: Sequence[VocObject]) -> str:
    """The annotation XML of one image, laid out like the real VOC2007 files."""
    parts = [
        f"<annotation>\n\t<folder>VOC</folder>\n\t<filename>{image_id}.jpg</filename>\n",
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n",
        "\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n",
    ]
    for name, x1, y1, x2, y2, *rest in objects:
        difficult = int(bool(rest[0])) if rest else 0
        parts.append(
            f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>0</truncated>\n\t\t<difficult>{difficult}</difficult>\n"
            f"\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n"
            f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts)


def jpeg_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A real JPEG of the given size: a smooth gradient plus a little seeded noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), 0 * xx], -1)
    pixels = pixels + rng.integers(0, 30, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_voc_tree(root: Path, year: str, image_set: str, images: Sequence[dict[str, Any]]) -> Path:
    """Write images into root/VOC<year> and append their ids to ImageSets/Main/<image_set>.txt.

    Each image is a dict: "id" (required), "width" (64), "height" (48), "objects" (list of
    VocObject), and for broken inputs "xml" (raw text instead of the generated XML), "jpeg" (raw
    bytes instead of a real JPEG), "no_xml" / "no_jpeg" (leave that file out). Returns root.
    """
    year_dir = root / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True, exist_ok=True)
    with (year_dir / "ImageSets" / "Main" / f"{image_set}.txt").open("a") as set_file:
        for i, image in enumerate(images):
            image_id, width, height = image["id"], image.get("width", 64), image.get("height", 48)
            set_file.write(f"{image_id}\n")
            if not image.get("no_xml"):
                xml = (
                    image["xml"]
                    if "xml" in image
                    else voc_xml(image_id, width, height, image.get("objects", []))
                )
                (year_dir / "Annotations" / f"{image_id}.xml").write_text(xml)
            if not image.get("no_jpeg"):
                data = image["jpeg"] if "jpeg" in image else jpeg_bytes(width, height, seed=i)
                (year_dir / "JPEGImages" / f"{image_id}.jpg").write_bytes(data)
    return root


@pytest.fixture(name="write_voc_tree")
def write_voc_tree_fixture() -> WriteVocTree:
    """`write_voc_tree(root, year, image_set, images)`: see the function of that name above."""
    return write_voc_tree
