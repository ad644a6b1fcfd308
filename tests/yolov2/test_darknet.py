"""darknet .cfg/.weights: parsing, writing, loading, and agreement with OpenCV's darknet reader."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from yolov2.darknet import (
    DEFAULT_NET,
    DEFAULT_REGION,
    cfg_text,
    load_darknet,
    load_darknet_weights,
    parse_cfg,
    save_darknet,
    write_cfg,
)
from yolov2.errors import InputError
from yolov2.model import Architecture, YOLOv2, build_model, yolov2_tiny_voc, yolov2_voc

# darknet's cfg/yolov2-voc.cfg, as released.
YOLOV2_VOC_CFG = """\
[net]
# Testing
batch=1
subdivisions=1
# Training
# batch=64
# subdivisions=8
height=416
width=416
channels=3
momentum=0.9
decay=0.0005
angle=0
saturation = 1.5
exposure = 1.5
hue=.1

learning_rate=0.001
burn_in=1000
max_batches = 80200
policy=steps
steps=40000,60000
scales=.1,.1

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=64
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=256
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=128
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=256
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=256
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=256
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=1024
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=512
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=1024
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=512
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=1024
size=3
stride=1
pad=1
activation=leaky


#######

[convolutional]
batch_normalize=1
size=3
stride=1
pad=1
filters=1024
activation=leaky

[convolutional]
batch_normalize=1
size=3
stride=1
pad=1
filters=1024
activation=leaky

[route]
layers=-9

[convolutional]
batch_normalize=1
size=1
stride=1
pad=1
filters=64
activation=leaky

[reorg]
stride=2

[route]
layers=-1,-4

[convolutional]
batch_normalize=1
size=3
stride=1
pad=1
filters=1024
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=125
activation=linear


[region]
anchors =  1.3221, 1.73145, 3.19275, 4.00944, 5.05587, 8.09892, 9.47112, 4.84053, 11.2364, 10.0071
bias_match=1
classes=20
coords=4
num=5
softmax=1
jitter=.3
rescore=1

object_scale=5
noobject_scale=1
class_scale=1
coord_scale=1

absolute=1
thresh = .6
random=1
"""

# darknet's cfg/yolov2-tiny-voc.cfg, as released.
YOLOV2_TINY_VOC_CFG = """\
[net]
# Testing
batch=1
subdivisions=1
# Training
# batch=64
# subdivisions=2
width=416
height=416
channels=3
momentum=0.9
decay=0.0005
angle=0
saturation = 1.5
exposure = 1.5
hue=.1

learning_rate=0.001
max_batches = 40200
policy=steps
steps=-1,100,20000,30000
scales=.1,10,.1,.1

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=256
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=1024
size=3
stride=1
pad=1
activation=leaky

###########

[convolutional]
batch_normalize=1
size=3
stride=1
pad=1
filters=1024
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=125
activation=linear

[region]
anchors = 1.08,1.19,  3.42,4.41,  6.63,11.38,  9.42,5.11,  16.62,10.52
bias_match=1
classes=20
coords=4
num=5
softmax=1
jitter=.2
rescore=1

object_scale=5
noobject_scale=1
class_scale=1
coord_scale=1

absolute=1
thresh = .6
random=1
"""

# Filter-pruned yolov2-voc widths: arbitrary, except the passthrough conv (12) feeding reorg.
PRUNED_WIDTHS = [13, 27, 45, 22, 51, 70, 33, 65, 97, 41, 88, 39, 101, 150, 77, 143, 60, 131, 120]
PRUNED_WIDTHS += [111, 12, 140, 125]
ARCHS: dict[str, Callable[[], Architecture]] = {
    "yolov2-voc": yolov2_voc,
    "yolov2-tiny-voc": yolov2_tiny_voc,
    "pruned": lambda: yolov2_voc().with_widths(PRUNED_WIDTHS),
    "yolov2-voc-x0.25": functools.partial(yolov2_voc, width=0.25),
    "yolov2-tiny-voc-x0.25": functools.partial(yolov2_tiny_voc, width=0.25),
}
INPUT_SIZES = [(160, 160), (224, 288)]  # (height, width); the second is not square


def randomized(arch: Architecture, seed: int = 0) -> YOLOv2:
    """A model in eval mode whose every weight and BN statistic is random, so BN matters."""
    torch.manual_seed(seed)
    model = build_model(arch)
    with torch.no_grad():
        for block in model.conv_blocks():
            if block.bn is None:
                assert block.conv.bias is not None
                block.conv.bias.normal_(0.0, 0.5)
                continue
            block.bn.weight.uniform_(0.5, 1.5)
            block.bn.bias.normal_(0.0, 0.1)
            assert block.bn.running_mean is not None
            assert block.bn.running_var is not None
            block.bn.running_mean.normal_(0.0, 0.1)
            block.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def conv_bytes(model: YOLOv2) -> list[int]:
    """Bytes of each convolution in a .weights file: its parameters plus BN's running stats."""
    sizes = []
    for block in model.conv_blocks():
        floats = sum(p.numel() for p in block.parameters())
        if block.bn is not None:
            floats += 2 * block.bn.num_features
        sizes.append(4 * floats)
    return sizes


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key


def opencv_head(cfg: Path, weights: Path, x: torch.Tensor, head_layer: int) -> np.ndarray:
    import cv2  # a test dependency: missing, the darknet checks fail rather than skip

    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.fail(
            f"OpenCV {cv2.__version__} has no darknet importer (removed in 5.0): the darknet "
            "checks need opencv-python-headless<5"
        )
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(x.numpy())  # already float NCHW in [0, 1]: no blobFromImage scaling
    # The head is linear without BN, so darknet layer i's output is OpenCV's "conv_i".
    return np.asarray(net.forward(f"conv_{head_layer}"))


# What docs/correctness.md claims. Measured with these random models (outputs up to 2.5 in magnitude):
# yolov2-voc 1e-5 at most, tiny 3e-6, pruned 4e-7: float32 sums in another order. A batch-norm
# eps of 1e-5 instead of darknet's 1e-6 differs by 1.4e-4 to 1.8e-4 on yolov2-voc, 4e-5 on tiny.
OPENCV_MAX_ABS_DIFF = 2e-5


def opencv_difference(model: YOLOv2, tmp_path: Path) -> float:
    """Max |ours - OpenCV's| of the raw head at both input sizes, for `model` written to darknet."""
    arch = model.arch
    cfg, weights = tmp_path / "model.cfg", tmp_path / "model.weights"
    save_darknet(model, cfg, weights)
    worst = 0.0
    for height, width in INPUT_SIZES:
        x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            ours = model(x).numpy()
        theirs = opencv_head(cfg, weights, x, len(arch.layers) - 1)
        assert theirs.shape == ours.shape == (1, arch.head_filters, height // 32, width // 32)
        assert np.abs(ours).max() > 1  # not a vanished signal, which would compare equal trivially
        worst = max(worst, float(np.abs(theirs - ours).max()))
    return worst


@pytest.mark.parametrize("name", ["yolov2-voc", "yolov2-tiny-voc", "pruned"])
def test_raw_head_matches_opencv(name: str, tmp_path: Path) -> None:
    assert opencv_difference(randomized(ARCHS[name]()), tmp_path) <= OPENCV_MAX_ABS_DIFF


def test_the_opencv_comparison_catches_a_wrong_batch_norm_eps(tmp_path: Path) -> None:
    model = randomized(ARCHS["yolov2-tiny-voc"]())
    for block in model.conv_blocks():
        if block.bn is not None:
            block.bn.eps = 1e-5  # PyTorch's default; darknet normalises with 1e-6
    assert opencv_difference(model, tmp_path) > 1.5 * OPENCV_MAX_ABS_DIFF


@pytest.mark.parametrize("name", ["yolov2-voc-x0.25", "yolov2-tiny-voc-x0.25", "pruned"])
def test_save_load_round_trip_is_bit_exact(name: str, tmp_path: Path) -> None:
    model = randomized(ARCHS[name]())
    save_darknet(model, tmp_path / "a.cfg", tmp_path / "a.weights", seen=123_456_789_012)
    loaded = load_darknet(tmp_path / "a.cfg", tmp_path / "a.weights").eval()
    assert loaded.arch == model.arch
    assert_same_state(loaded, model)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    save_darknet(loaded, tmp_path / "b.cfg", tmp_path / "b.weights")  # keeps the loaded `seen`
    assert (tmp_path / "b.weights").read_bytes() == (tmp_path / "a.weights").read_bytes()
    assert (tmp_path / "b.cfg").read_text() == (tmp_path / "a.cfg").read_text()


def test_old_header_with_int32_seen_loads(tmp_path: Path) -> None:
    model = randomized(yolov2_tiny_voc(width=0.25))
    save_darknet(model, tmp_path / "new.cfg", tmp_path / "new.weights")
    body = (tmp_path / "new.weights").read_bytes()[20:]  # after int32 x3 + int64 seen
    (tmp_path / "old.weights").write_bytes(np.array([0, 1, 0, 4242], "<i4").tobytes() + body)
    fresh = build_model(model.arch)
    info = load_darknet_weights(fresh, tmp_path / "old.weights")
    assert (info.version, info.seen, info.convs_loaded, info.complete) == ((0, 1, 0), 4242, 9, True)
    assert_same_state(fresh, model)


def test_parse_real_cfgs_gives_the_reference_architectures(tmp_path: Path) -> None:
    (tmp_path / "yolov2-voc.cfg").write_text(YOLOV2_VOC_CFG)
    (tmp_path / "yolov2-tiny-voc.cfg").write_text(YOLOV2_TINY_VOC_CFG)
    arch, options = parse_cfg(tmp_path / "yolov2-voc.cfg")
    assert arch == yolov2_voc()
    assert options == {"net": DEFAULT_NET, "region": DEFAULT_REGION}
    tiny, tiny_options = parse_cfg(tmp_path / "yolov2-tiny-voc.cfg")
    assert tiny == yolov2_tiny_voc()
    assert tiny_options["region"] == {**DEFAULT_REGION, "jitter": 0.2}
    assert tiny_options["net"]["steps"] == "-1,100,20000,30000"


def test_write_cfg_round_trips_pruned_widths_and_options(tmp_path: Path) -> None:
    arch = yolov2_voc(num_classes=3, input_size=(320, 480)).with_widths([*PRUNED_WIDTHS[:-1], 40])
    write_cfg(
        arch, tmp_path / "p.cfg", region={"object_scale": 2.5, "thresh": 0.5}, net={"batch": 64}
    )
    text = (tmp_path / "p.cfg").read_text()
    assert "[route]\nlayers=-9\n" in text
    assert "[route]\nlayers=-1,-4\n" in text
    parsed, options = parse_cfg(tmp_path / "p.cfg")
    assert parsed == arch
    assert options["region"] == {**DEFAULT_REGION, "object_scale": 2.5, "thresh": 0.5}
    assert options["net"] == {**DEFAULT_NET, "batch": 64}
    write_cfg(parsed, tmp_path / "q.cfg", options["region"], options["net"])
    assert (tmp_path / "q.cfg").read_text() == text
    with pytest.raises(InputError, match="'classes' comes from the architecture"):
        cfg_text(arch, region={"classes": 20})


def test_partial_backbone_weights_load_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # darknet19_448.conv.23 holds the convolutions of layers 0..22: the first 18 of yolov2-voc.
    source = randomized(yolov2_voc(width=0.25))
    save_darknet(source, tmp_path / "full.cfg", tmp_path / "full.weights")
    backbone = 20 + sum(conv_bytes(source)[:18])
    (tmp_path / "conv.23").write_bytes((tmp_path / "full.weights").read_bytes()[:backbone])

    target = build_model(source.arch)
    before = [{k: v.clone() for k, v in b.state_dict().items()} for b in target.conv_blocks()]
    info = load_darknet_weights(target, tmp_path / "conv.23")
    assert (info.convs_loaded, info.convs_total, info.complete) == (18, 23, False)
    for index, (ours, theirs) in enumerate(
        zip(target.conv_blocks(), source.conv_blocks(), strict=True)
    ):
        expected = theirs.state_dict() if index < 18 else before[index]
        for key, value in ours.state_dict().items():
            assert torch.equal(value, expected[key]), (index, key)

    with caplog.at_level(logging.WARNING, logger="yolov2.darknet"):
        load_darknet(tmp_path / "full.cfg", tmp_path / "conv.23")
    assert "loaded 18 of 23 convolutions (layers 0..22)" in caplog.text


def _edit(old: str, new: str) -> str:
    assert old in YOLOV2_TINY_VOC_CFG
    return YOLOV2_TINY_VOC_CFG.replace(old, new, 1)


def _line(text: str, needle: str) -> int:
    return text.splitlines().index(needle) + 1


BAD_CFGS = {  # name: (cfg text, what the message must say after the file name)
    "shortcut": (
        _edit("###########", "[shortcut]\nfrom=-3\nactivation=linear"),
        "layer 13 [shortcut] is not supported (YOLOv2 family only)",
    ),
    "activation": (
        text := _edit("activation=leaky", "activation=mish"),
        f":{_line(text, 'activation=mish')}: layer 0 [convolutional]: "
        "activation 'mish' is not supported (leaky or linear)",
    ),
    "head filters": (
        _edit("filters=125", "filters=120"),
        "the head (layer 14) has filters=120, but num*(5+classes) = 5*(5+20) = 125",
    ),
    "missing filters": (
        _edit("filters=16\n", ""),
        "layer 0 [convolutional]: missing option 'filters'",
    ),
    "bad number": (
        text := _edit("filters=32", "filters=3x2"),
        f":{_line(text, 'filters=3x2')}: layer 2 [convolutional]: "
        "option filters=3x2 is not a valid value",
    ),
    "unsupported option": (
        _edit("filters=16", "filters=16\ngroups=2"),
        "layer 0 [convolutional]: option groups=2 is not supported",
    ),
    "unknown option": (
        _edit("filters=16", "filters=16\nfliters=2"),
        "layer 0 [convolutional]: unknown option 'fliters'",
    ),
    "pool": (
        _edit("size=2\nstride=2", "size=3\nstride=2"),
        "layer 1 [maxpool]: maxpool size=3 stride=2 padding=2 is not supported",
    ),
    "route": (
        _edit("###########", "[route]\nlayers=-40"),
        "layer 13 [route]: route layers=-40 must name earlier layers",
    ),
    "no region": (_edit("[region]", "[yolo]"), "no [region] section (YOLOv2 family only)"),
    "region not last": (
        YOLOV2_TINY_VOC_CFG + "\n[convolutional]\nfilters=8\nactivation=linear\n",
        "layer 15 [region]: must be the last section",
    ),
    "anchors": (_edit("num=5", "num=4"), "[region]: needs classes >= 1 and 2*num = 8 anchors"),
    "no net": (_edit("[net]", "[network2]"), "the first section must be [net]"),
    "input size": (_edit("width=416", "width=400"), "must be positive multiples of 32"),
}


@pytest.mark.parametrize("name", BAD_CFGS)
def test_bad_cfg_is_refused_with_file_and_place(name: str, tmp_path: Path) -> None:
    text, message = BAD_CFGS[name]
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        parse_cfg(path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)


def _header(major: int, minor: int) -> bytes:
    return np.array([major, minor, 0], "<i4").tobytes() + np.array([0], "<u8").tobytes()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mid-layer", "ends inside layer 4 (convolution 2): {short} bytes short"),
        ("extra", "8 bytes left after the last layer (layer 14)"),
        ("bad header", "(header version -1.2.0)"),
        ("absurd header", "(header version 0.123456.0)"),
        ("header only", "holds a header but no layer weights"),
        ("short header", "10 bytes is too short for a darknet .weights header"),
        ("missing", "cannot read darknet weights"),
    ],
)
def test_bad_weights_are_refused_with_file_and_layer(
    name: str, message: str, tmp_path: Path
) -> None:
    model = randomized(yolov2_tiny_voc(width=0.25))
    save_darknet(model, tmp_path / "m.cfg", tmp_path / "m.weights")
    good = (tmp_path / "m.weights").read_bytes()
    ends = np.cumsum(conv_bytes(model)).tolist()
    assert len(good) == 20 + ends[-1]
    contents = {
        "mid-layer": good[: 20 + ends[1] + 100],  # 100 bytes into the third convolution
        "extra": good + bytes(8),
        "bad header": _header(-1, 2) + good[20:],
        "absurd header": _header(0, 123456) + good[20:],
        "header only": good[:20],
        "short header": good[:10],
    }
    path = tmp_path / "bad.weights"
    if name in contents:
        path.write_bytes(contents[name])
    before = randomized(model.arch)
    with pytest.raises(InputError) as error:
        load_darknet_weights(model, path)
    assert str(error.value).startswith(f"{path}: ")
    assert message.format(short=ends[2] - ends[1] - 100) in str(error.value)
    assert_same_state(model, before)  # refused before anything was copied


def test_missing_cfg_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothing\.cfg: cannot read darknet cfg"):
        load_darknet(tmp_path / "nothing.cfg", tmp_path / "nothing.weights")


def test_save_darknet_writes_both_files_or_neither(tmp_path: Path) -> None:
    model = randomized(yolov2_tiny_voc(width=0.25))
    (tmp_path / "m.weights").mkdir()  # the weights cannot be put in place
    with pytest.raises(OSError, match=r"m\.weights"):
        save_darknet(model, tmp_path / "m.cfg", tmp_path / "m.weights")
    assert [p.name for p in tmp_path.iterdir()] == ["m.weights"]
