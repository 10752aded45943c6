import numpy as np
import pytest
import torch
from factories import write_detection_set, write_digits_imagefolder
from PIL import Image

from engine.config import RunConfig
from engine.data import DetectionTransform, build_transform, load_splits, preview_augmentations
from engine.data.transforms import RandomAreaCrop

W, H = 96, 64
# Two objects, each painted in its own colour channel so interpolation never mixes them up.
OBJECTS = np.array([[10, 8, 30, 28], [60, 30, 85, 50]], dtype=np.float32)


def _scene() -> Image.Image:
    pixels = np.zeros((H, W, 3), np.uint8)
    for channel, (x1, y1, x2, y2) in enumerate(OBJECTS.astype(int)):
        pixels[y1:y2, x1:x2, channel] = 255
    return Image.fromarray(pixels)


# Augmentation is on by default (flips for detection); each test names what it turns on.
NO_AUGMENTATION = {"augment_hflip": False, "augment_color": False, "augment_crop": False}


def _cfg(**augment):
    return RunConfig.from_dict({"dataset": "x", "task": "detection", **NO_AUGMENTATION, **augment})


def _ink_box(mask: torch.Tensor):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def _check_boxes_on_objects(image, boxes, labels, tol):
    height, width = image.shape[-2:]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    for label in (0, 1):
        mask = image[label] > 0.5
        found = (labels == label).nonzero().flatten()
        if len(found) == 0:
            assert mask.sum() <= 2, "an object still in the picture lost its box"
            continue
        assert len(found) == 1 and mask.sum() > 0, "a box was kept for an object pushed out"
        box = boxes[found[0]].tolist()
        ink = _ink_box(mask)
        assert box[0] <= ink[0] + tol and box[1] <= ink[1] + tol
        assert box[2] >= ink[2] - tol and box[3] >= ink[3] - tol


def test_flips_move_boxes_exactly_with_the_image():
    transform = DetectionTransform(_cfg(augment_hflip=True, augment_vflip=True), train=True)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, boxes, labels = transform(_scene(), OBJECTS, np.array([0, 1]))
        assert image.shape == (3, H, W) and labels.tolist() == [0, 1]
        for label in (0, 1):
            assert boxes[label].tolist() == _ink_box(image[label] > 0.5)
        seen.add(tuple(boxes[0].tolist()))
    assert len(seen) == 4  # none, horizontal, vertical and both flips all happened


@pytest.mark.parametrize(
    "augment",
    [
        {"augment_rotation": 35.0},
        {"augment_crop": True, "crop_min_ratio": 0.3},
        {
            "augment_hflip": True,
            "augment_rotation": 20.0,
            "augment_crop": True,
            "crop_min_ratio": 0.4,
        },
    ],
)
def test_rotation_and_crop_keep_boxes_on_their_objects(augment):
    transform = DetectionTransform(_cfg(**augment), train=True)
    changed = 0
    for seed in range(25):
        torch.manual_seed(seed)
        image, boxes, labels = transform(_scene(), OBJECTS, np.array([0, 1]))
        assert len(labels) >= 1
        _check_boxes_on_objects(image, boxes, labels, tol=1.0)
        changed += image.shape[-2:] != (H, W) or not torch.equal(boxes, torch.as_tensor(OBJECTS))
    assert changed >= 20


def test_crop_drops_objects_pushed_out_and_clips_cut_ones():
    transform = DetectionTransform(_cfg(augment_crop=True, crop_min_ratio=0.2), train=True)
    dropped = clipped = 0
    for seed in range(40):
        torch.manual_seed(seed)
        image, boxes, labels = transform(_scene(), OBJECTS, np.array([0, 1]))
        _check_boxes_on_objects(image, boxes, labels, tol=0.0)
        dropped += len(labels) < 2
        sizes = (boxes[:, 2:] - boxes[:, :2]).tolist()
        clipped += any(s not in ([20.0, 20.0], [25.0, 20.0]) for s in sizes)
    assert dropped > 0 and clipped > 0


def test_at_least_one_box_survives_aggressive_geometry():
    corner = np.array([[0, 0, 8, 8]], np.float32)
    pixels = np.zeros((H, W, 3), np.uint8)
    pixels[0:8, 0:8, 0] = 255
    transform = DetectionTransform(
        _cfg(augment_rotation=60.0, augment_crop=True, crop_min_ratio=0.05), train=True
    )
    for seed in range(30):
        torch.manual_seed(seed)
        image, boxes, labels = transform(Image.fromarray(pixels), corner, np.array([0]))
        assert len(labels) == 1
        _check_boxes_on_objects(image, boxes, labels, tol=1.0)


def test_background_images_stay_background():
    transform = DetectionTransform(_cfg(augment_crop=True, augment_rotation=10.0), train=True)
    image, boxes, labels = transform(_scene(), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert boxes.shape == (0, 4) and labels.shape == (0,) and image.dim() == 3


def test_eval_detection_transform_changes_nothing_and_does_not_resize():
    transform = DetectionTransform(_cfg(augment_hflip=True, augment_color=True), train=False)
    image, boxes, labels = transform(_scene(), OBJECTS, np.array([0, 1]))
    assert image.shape == (3, H, W)
    assert torch.equal(image, torch.as_tensor(np.array(_scene())).permute(2, 0, 1) / 255.0)
    assert torch.equal(boxes, torch.as_tensor(OBJECTS)) and labels.dtype == torch.int64


def test_color_jitter_changes_pixels_not_boxes():
    transform = DetectionTransform(_cfg(augment_color=True), train=True)
    scene = Image.fromarray(np.full((H, W, 3), 120, np.uint8))
    outputs = []
    for seed in range(3):
        torch.manual_seed(seed)
        image, boxes, _ = transform(scene, OBJECTS, np.array([0, 1]))
        assert torch.equal(boxes, torch.as_tensor(OBJECTS))
        outputs.append(image)
    assert not torch.allclose(outputs[0], outputs[1])


def test_random_area_crop_keeps_aspect_and_area_share():
    crop = RandomAreaCrop(0.5)
    for seed in range(20):
        torch.manual_seed(seed)
        p = crop.make_params([Image.new("RGB", (300, 200))])
        assert abs(p["width"] / p["height"] - 1.5) < 0.02
        assert 0.49 <= p["width"] * p["height"] / 60000 <= 1.0
        assert 0 <= p["left"] <= 300 - p["width"] and 0 <= p["top"] <= 200 - p["height"]


def test_classification_transform_shapes_normalisation_and_seeding():
    cfg = RunConfig.from_dict(
        {
            "dataset": "x",
            "augment_crop": True,
            "crop_min_ratio": 0.5,
            "augment_hflip": True,
            "augment_rotation": 15,
            "augment_color": True,
        }
    )
    image = _scene()
    train = build_transform(cfg, True, 40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(1)
    a = train(image)
    torch.manual_seed(1)
    b = train(image)
    torch.manual_seed(2)
    c = train(image)
    assert a.shape == (3, 40, 40) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = build_transform(cfg, False, 40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = plain(image)
    assert torch.equal(out, plain(image))
    assert out.min().item() == pytest.approx(-2.0) and out.max().item() == pytest.approx(2.0)
    unnormalised = build_transform(cfg, False, 24)(image)
    assert unnormalised.shape == (3, 24, 24) and unnormalised.min() >= 0 and unnormalised.max() <= 1


def test_preview_augmentations_for_both_tasks(tmp_path):
    folder = write_digits_imagefolder(tmp_path / "cls", per_class=3, classes=range(3))
    cls_splits = load_splits(folder, "classification")
    cfg = RunConfig.from_dict({"dataset": "x", "augment_hflip": True, "augment_rotation": 10})
    state = torch.get_rng_state()
    previews = preview_augmentations(cls_splits, cfg, n=4, image_size=48)
    assert torch.equal(state, torch.get_rng_state())  # the training RNG is left alone
    assert len(previews) == 4
    for picture, caption in previews:
        assert isinstance(picture, Image.Image) and picture.size == (48, 48)
        assert caption.split(" · ")[0] in cls_splits.classes
    again = preview_augmentations(cls_splits, cfg, n=4, image_size=48)
    assert [np.asarray(p).tolist() for p, _ in again] == [
        np.asarray(p).tolist() for p, _ in previews
    ]

    det_root = write_detection_set(tmp_path / "det", "coco", n_images=5, canvas=64, background=0)
    det_splits = load_splits(det_root, "detection")
    det_cfg = _cfg(augment_vflip=True, augment_crop=True)
    previews = preview_augmentations(det_splits, det_cfg, n=3)
    assert len(previews) == 3
    for picture, caption in previews:
        assert picture.mode == "RGB" and "box" in caption
        pixels = np.asarray(picture).reshape(-1, 3)
        assert (pixels[:, 0] != pixels[:, 1]).any()  # coloured box outlines on a gray picture
