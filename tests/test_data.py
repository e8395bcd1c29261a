"""The dataset readers and augmentation on tiny generated folders."""

import random

import numpy as np
import pytest
import torch
from _datagen import make_folder
from torch.utils.data import ConcatDataset

from refinenet.data import EvalTransform, SegmentationFolder, TrainTransform, build_dataset, class_mix, cut_mix


def test_folder_pairs_images_and_labels_by_stem(tmp_path):
    make_folder(tmp_path / "img", tmp_path / "lab", ["b", "a", "c"], suffix=".jpg")
    ds = SegmentationFolder(tmp_path / "img", tmp_path / "lab")
    assert [p.stem for p, _ in ds.samples] == ["a", "b", "c"]
    x, y = ds[1]
    assert x.shape == (3, 30, 40) and x.dtype == torch.float32
    assert y.shape == (30, 40) and y.dtype == torch.int64
    assert y[0, 0] == 255 and set(y.unique().tolist()) <= {0, 1, 2, 255}


def test_split_list_selects_and_missing_label_is_reported(tmp_path):
    make_folder(tmp_path / "img", tmp_path / "lab", ["a", "b", "c"])
    (tmp_path / "val.txt").write_text("c\na\n")
    ds = SegmentationFolder(tmp_path / "img", tmp_path / "lab", tmp_path / "val.txt")
    assert [p.stem for p, _ in ds.samples] == ["c", "a"]
    (tmp_path / "lab" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="lack an image or a label"):
        SegmentationFolder(tmp_path / "img", tmp_path / "lab")


def test_train_transform_crops_pads_with_ignore_and_keeps_labels_aligned(tmp_path):
    make_folder(tmp_path / "img", tmp_path / "lab", ["a"], size=(40, 30))
    from PIL import Image

    image = Image.open(tmp_path / "img" / "a.png").convert("RGB")
    label = Image.open(tmp_path / "lab" / "a.png")
    t = TrainTransform(
        crop_size=64,
        scale_range=(1.0, 1.0),
        flip=False,
        photometric=0.0,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        ignore_index=255,
    )
    x, y = t(image, label, random.Random(0))
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    # The 40x30 image fits in the crop: everything outside it is padding with the ignore label.
    assert (y[30:, :] == 255).all() and (y[:, 40:] == 255).all()
    assert (x[:, 30:, :] == 0).all()
    assert torch.equal(y[:30, :40], torch.from_numpy(np.asarray(label, dtype=np.int64)))


def test_flip_moves_image_and_label_together(tmp_path):
    make_folder(tmp_path / "img", tmp_path / "lab", ["a"], size=(32, 32))
    from PIL import Image

    image = Image.open(tmp_path / "img" / "a.png").convert("RGB")
    label = Image.open(tmp_path / "lab" / "a.png")
    t = TrainTransform(crop_size=32, scale_range=(1.0, 1.0), flip=True, photometric=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    flipped = [t(image, label, random.Random(s)) for s in range(20)]
    plain = EvalTransform(mean=(0, 0, 0), std=(1, 1, 1))(image, label, random.Random(0))
    mirrored = [(x, y) for x, y in flipped if not torch.equal(y, plain[1])]
    assert mirrored, "20 draws should include a flip"
    for x, y in mirrored:
        assert torch.equal(y, plain[1].flip(-1)) and torch.allclose(x, plain[0].flip(-1))


def test_camvid_layout_and_joined_splits(tmp_path):
    make_folder(tmp_path / "train", tmp_path / "trainannot", ["t1", "t2"], ignore=11)
    make_folder(tmp_path / "val", tmp_path / "valannot", ["v1"], ignore=11)
    ds = build_dataset("camvid", tmp_path, "train+val", EvalTransform())
    assert isinstance(ds, ConcatDataset) and len(ds) == 3
    assert ds[2][1][0, 0] == 11


def test_voc_style_folders(tmp_path):
    make_folder(tmp_path / "train" / "images", tmp_path / "train" / "labels", ["1", "2"], suffix=".jpg")
    ds = build_dataset("folders", tmp_path, "train", EvalTransform())
    assert len(ds) == 2
    with pytest.raises(FileNotFoundError):
        build_dataset("folders", tmp_path, "val", EvalTransform())


def _stripes_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four 12x12 images whose labels are vertical stripes of four classes (plus an ignored
    column), each image a distinct constant colour so pasted pixels can be traced to their source."""
    labels = torch.zeros(4, 12, 12, dtype=torch.int64)
    for i in range(4):
        for column in range(12):
            labels[i, :, column] = (column // 3 + i) % 4
        labels[i, :, 11] = 255
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 12, 12).clone()
    return images, labels


def test_class_mix_pastes_half_the_classes_of_the_previous_image_with_their_labels():
    images, labels = _stripes_batch()
    mixed_images, mixed_labels = class_mix(images, labels, 1.0, 255, torch.Generator().manual_seed(0))
    for i in range(4):
        source = (i - 1) % 4
        pasted = mixed_images[i, 0] == source
        # Pixels come from this image or the previous one; labels travel with them.
        assert torch.all(pasted | (mixed_images[i, 0] == i))
        assert torch.equal(mixed_labels[i][pasted], labels[source][pasted])
        assert torch.equal(mixed_labels[i][~pasted], labels[i][~pasted])
        # Whole classes move: exactly two of the source's four, every pixel of each, never the ignored ones.
        moved = set(labels[source][pasted].tolist())
        assert len(moved) == 2 and 255 not in moved
        assert torch.equal(pasted, torch.isin(labels[source], torch.tensor(sorted(moved))))
    # The inputs are untouched.
    assert torch.equal(images, _stripes_batch()[0]) and torch.equal(labels, _stripes_batch()[1])


def test_cut_mix_pastes_one_rectangle_of_the_previous_image_with_everything_that_describes_its_pixels():
    # Image i is filled with the value i, so every pixel says which image it came from; the other
    # tensors are made from the same numbers, so each must agree with the image pixel by pixel.
    batch, h, w = 4, 12, 16
    images = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 3, h, w).clone()
    labels = torch.arange(batch).view(batch, 1, 1).expand(batch, h, w) * 10
    allowed = torch.zeros(batch, 5, h, w, dtype=torch.bool)
    for i in range(batch):
        allowed[i, i] = True
    weights = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1).expand(batch, h, w) + 0.5
    mixed = cut_mix([images, labels, allowed, None, weights], 1.0, torch.Generator().manual_seed(0))
    mixed_images, mixed_labels, mixed_allowed, nothing, mixed_weights = mixed
    assert nothing is None
    pasted_somewhere = False
    for i in range(batch):
        source = (i - 1) % batch
        pasted = mixed_images[i, 0] == source
        assert torch.all(pasted | (mixed_images[i, 0] == i))
        assert torch.equal(mixed_images[i], mixed_images[i, :1].expand(3, h, w))
        assert torch.equal(mixed_labels[i], torch.where(pasted, source * 10, i * 10))
        assert torch.equal(mixed_allowed[i, source], pasted) and torch.equal(mixed_allowed[i, i], ~pasted)
        assert torch.equal(mixed_weights[i], torch.where(pasted, source + 0.5, i + 0.5))
        if pasted.any():
            pasted_somewhere = True
            # One axis-aligned rectangle: its bounding box is all pasted.
            rows, cols = pasted.any(1).nonzero()[:, 0], pasted.any(0).nonzero()[:, 0]
            assert pasted[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
    assert pasted_somewhere
    # The inputs are untouched; nothing happens at probability 0 or with one image.
    assert torch.equal(images[1], torch.ones(3, h, w)) and torch.equal(labels[2], torch.full((h, w), 20))
    same = cut_mix([images, labels], 0.0, torch.Generator().manual_seed(0))
    assert same[0] is images and same[1] is labels
    alone = cut_mix([images[:1], labels[:1]], 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(alone[0], images[:1])
    with pytest.raises(ValueError, match="one batch of one size"):
        cut_mix([images, labels[:, :6]], 1.0, torch.Generator().manual_seed(0))


def test_cut_mix_share_follows_the_probability_and_seed():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 20, 20).clone()
    a = cut_mix([images], 0.5, torch.Generator().manual_seed(3))[0]
    b = cut_mix([images], 0.5, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)
    generator = torch.Generator().manual_seed(1)
    draws = [cut_mix([images], 0.5, generator)[0] for _ in range(200)]
    mixed = sum(int(not torch.equal(d[i], images[i])) for d in draws for i in range(4))
    # About half the images get a rectangle (a few draw one too thin to hold a pixel).
    assert 300 < mixed < 500
    # The pasted share is uniform on [0, 1]: its mean over the mixed images is near a half.
    shares = [float((d[i, 0] != i).float().mean()) for d in draws for i in range(4) if not torch.equal(d[i], images[i])]
    assert 0.3 < sum(shares) / len(shares) < 0.5


def test_class_mix_probability_and_seed():
    images, labels = _stripes_batch()
    unchanged = class_mix(images, labels, 0.0, 255, torch.Generator().manual_seed(0))
    assert torch.equal(unchanged[0], images) and torch.equal(unchanged[1], labels)
    a = class_mix(images, labels, 0.5, 255, torch.Generator().manual_seed(3))
    b = class_mix(images, labels, 0.5, 255, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Over many draws about half the images are mixed.
    generator = torch.Generator().manual_seed(1)
    mixed = sum(
        int(not torch.equal(class_mix(images, labels, 0.5, 255, generator)[1][i], labels[i]))
        for _ in range(200)
        for i in range(4)
    )
    assert 300 < mixed < 500
    # An image whose neighbour holds a single class (or only ignored pixels) gets nothing pasted.
    single = labels.clone()
    single[3] = 255
    single[3, :, :5] = 1
    out = class_mix(images, single, 1.0, 255, torch.Generator().manual_seed(0))
    assert torch.equal(out[1][0], single[0]) and torch.equal(out[0][0], images[0])
