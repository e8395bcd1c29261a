"""scripts/class_table.py: per-class figures of several models side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _scripts import SCRIPTS, load_script

table = load_script("class_table")

BOXED = {
    "mIoU": 62.5,
    "found": 75.0,
    "outside": 12.25,
    "per_class_iou": {"background": 90.0, "cat": 35.0},
    "per_class_found": {"cat": 75.0},
    "per_class_outside": {"cat": 12.25},
}
PLAIN = {"mIoU": 50.0, "per_class_iou": {"background": 80.0, "cat": 20.0}}


def test_each_class_shows_each_models_iou_found_and_outside_and_background_has_no_boxes():
    lines = table.class_table([("new", BOXED), ("old", PLAIN)]).splitlines()
    assert lines[0] == "| class | new (IoU / found / outside) | old (IoU / found / outside) |"
    assert lines[2] == "| background | 90.0 / - / - | 80.0 |"  # no boxes of background; old had none at all
    assert lines[3] == "| cat | 35.0 / 75.0 / 12.2 | 20.0 |"  # 12.25 rounds to even
    assert lines[4] == "| **all** | 62.50 / 75.00 / 12.25 | 50.00 |"  # as the results tables print them
    assert len(lines) == 5


def test_results_on_other_classes_are_refused():
    other = {"mIoU": 1.0, "per_class_iou": {"background": 1.0, "dog": 1.0}}
    with pytest.raises(ValueError, match="other classes"):
        table.class_table([("a", BOXED), ("b", other)])


def test_the_command_reads_name_json_pairs_and_names_a_bad_one(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(BOXED))
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "class_table.py"), f"this model={path}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "| cat | 35.0 / 75.0 / 12.2 |" in done.stdout
    bad = subprocess.run([sys.executable, str(SCRIPTS / "class_table.py"), str(path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected NAME=JSON" in bad.stderr
    missing = subprocess.run(
        [sys.executable, str(SCRIPTS / "class_table.py"), f"x={tmp_path / 'nope.json'}"], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr
