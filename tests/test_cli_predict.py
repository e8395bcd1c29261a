"""``refinenet predict`` in-process and as a real subprocess, on generated images and a corrupt file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refinenet.cli import main
from refinenet.hub import from_pretrained
from refinenet.inference import Segmenter
from refinenet.visualize import palette_array

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    """Two generated photos (odd sizes, one of them a JPEG) and one corrupt file, in that order
    on the command line: good, corrupt, good."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    first = folder / "street.png"
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(first)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" + rng.bytes(300))
    second = folder / "field.jpg"
    Image.fromarray(rng.integers(0, 256, (41, 29, 3), dtype=np.uint8)).save(second, quality=95)
    return [first, broken, second]


def check_outputs(out: Path, inputs: list[Path], model_folder: Path) -> None:
    good = [inputs[0], inputs[2]]
    model = from_pretrained(model_folder)
    segmenter = Segmenter(model, device="cpu")
    palette = palette_array(model.config.palette, model.config.num_classes)
    for path in good:
        expected = segmenter.predict(path)
        with Image.open(out / f"{path.stem}_labels.png") as labels:
            assert labels.mode == "P"
            values = np.asarray(labels)
            written_palette = np.asarray(labels.getpalette()[: 3 * 5]).reshape(5, 3)
        assert np.array_equal(values, expected.label_map)  # pixel values are the class indices
        assert len(np.unique(values)) >= 2
        assert np.array_equal(written_palette, palette[:5])
        with Image.open(out / f"{path.stem}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == expected.image.size
    assert not list(out.glob("broken*"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{p.stem}_{kind}.png" for p in good for kind in ("labels", "overlay")
    )


def test_predict_in_process(inputs, tiny_model_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", *map(str, inputs), "--model", str(tiny_model_folder), "--out", str(out), "--device", "cpu"])
    assert code == 1  # because of broken.jpg
    err = capsys.readouterr().err
    assert "broken.jpg' is a damaged image file" in err
    assert "wrote 2 of 3" in err
    check_outputs(out, inputs, tiny_model_folder)


def test_predict_as_a_subprocess(inputs, tiny_model_folder, tmp_path):
    out = tmp_path / "out"
    script = shutil.which("refinenet", path=os.path.dirname(sys.executable))
    command = (
        [script]
        if script
        else [sys.executable, "-c", "import sys; from refinenet.cli import main; sys.exit(main(sys.argv[1:]))"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            *command,
            "predict",
            *map(str, inputs),
            "--model",
            str(tiny_model_folder),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "broken.jpg' is a damaged image file" in done.stderr
    check_outputs(out, inputs, tiny_model_folder)


def test_all_good_inputs_exit_0_and_options_are_used(inputs, tiny_model_folder, tmp_path):
    out = tmp_path / "out"
    good = inputs[0]
    code = main(
        [
            "predict",
            str(good),
            "--model",
            str(tiny_model_folder),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--scales",
            "0.75,1,1.25",
            "--flip",
            "--max-side",
            "40",
            "--alpha",
            "1",
        ]
    )
    assert code == 0
    expected = Segmenter(
        from_pretrained(tiny_model_folder), device="cpu", max_side=40, scales=(0.75, 1.0, 1.25), flip=True
    ).predict(good)
    labels = np.asarray(Image.open(out / "street_labels.png"))
    assert expected.input_size == (28, 40)  # 53 -> 40, 37 -> round(27.92) = 28
    assert labels.shape == (37, 53) and np.array_equal(labels, expected.label_map)
    # alpha 1: the overlay is the coloured label map alone.
    palette = palette_array(None, 5)
    assert np.array_equal(np.asarray(Image.open(out / "street_overlay.png")), palette[expected.label_map])


def test_same_stems_do_not_overwrite_each_other(tiny_model_folder, tmp_path):
    paths = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        paths.append(tmp_path / sub / "frame.png")
        Image.new("RGB", (9, 7), (10, 200, 30) if sub == "a" else (200, 10, 30)).save(paths[-1])
    out = tmp_path / "out"
    assert main(["predict", *map(str, paths), "--model", str(tiny_model_folder), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "frame-2_labels.png",
        "frame-2_overlay.png",
        "frame_labels.png",
        "frame_overlay.png",
    ]
    first = np.asarray(Image.open(out / "frame_overlay.png"))
    second = np.asarray(Image.open(out / "frame-2_overlay.png"))
    assert not np.array_equal(first, second)


def test_without_a_model_the_apps_default_is_used(tmp_path):
    """No ``--model``: the zoo's first model (the app's default, bundled) segments the shipped cat
    photo, and the labels are that model's."""
    from refinenet import zoo

    photo = Path(__file__).resolve().parents[1] / "assets" / "chelsea-the-cat.jpg"
    out = tmp_path / "out"
    assert main(["predict", str(photo), "--out", str(out), "--device", "cpu"]) == 0
    default = from_pretrained(zoo.list_pretrained()[0].model_id)
    expected = Segmenter(default, device="cpu").predict(photo).label_map
    with Image.open(out / "chelsea-the-cat_labels.png") as labels:
        values = np.asarray(labels)
    assert np.array_equal(values, expected)
    if "cat" in default.config.class_names:  # the VOC model: the photo is mostly cat
        assert np.mean(values == default.config.class_names.index("cat")) > 0.3


def test_a_missing_model_is_a_clear_error(inputs, tmp_path, capsys):
    code = main(["predict", str(inputs[0]), "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path)])
    assert code == 1
    assert "cannot load the model" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--scales", "1,x"], ["--scales", "0"], ["--alpha", "2"], ["--max-side", "-3"]])
def test_bad_options_are_usage_errors(inputs, tiny_model_folder, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(inputs[0]), "--model", str(tiny_model_folder), *option])
    assert exit_info.value.code == 2
    assert option[0] in capsys.readouterr().err
