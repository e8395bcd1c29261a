"""scripts/release_model.py: the tables a VOC model card is made of, from hand-made eval results
and training logs (the script itself evaluates real data, which tests do not have)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _scripts import load_script


@pytest.fixture(scope="module")
def release():
    return load_script("release_model")


def _result(miou: float, found: float | None = None) -> dict:
    result = {"mIoU": miou, "pixel_accuracy": 90.0, "per_class_iou": {"background": 80.0, "cat": None}}
    if found is not None:
        result |= {
            "found": found,
            "found_small": found / 2,
            "outside": 12.5,
            "per_class_found": {"background": None, "cat": found},
            "per_class_outside": {"background": None, "cat": 12.5},
        }
    return result


def test_per_class_table_adds_found_and_outside_only_where_there_are_boxes(release):
    boxed = release.per_class_table(_result(61.0, found=75.0), None).splitlines()
    assert boxed[0] == "| class | IoU (single scale) | found | outside |"
    assert boxed[1] == "|---|---|---|---|"
    assert boxed[3] == "| cat | - | 75.0 | 12.5 |"  # a class absent from the labels has no IoU
    assert boxed[-1] == "| **all** | **61.00** | **75.0** | **12.5** |"
    plain = release.per_class_table(_result(61.0), _result(63.5)).splitlines()
    assert plain[0] == "| class | IoU (single scale) | IoU (0.75/1/1.25 + flip) |"
    assert plain[-1] == "| **all** | **61.00** | **63.50** |"


def test_reference_table_quotes_each_results_command(release):
    teacher = _result(89.7, found=72.7) | {"command": "python scripts/eval_teacher.py --out t.json"}
    rows = release.reference_table([("teacher", teacher), ("old", _result(66.2, found=60.9))]).splitlines()
    assert rows[2] == "| teacher | 89.70 | 72.70% | 36.35% | 12.50% | `python scripts/eval_teacher.py --out t.json` |"
    assert rows[3].endswith("| not recorded |")


def test_comparison_table_reads_each_run_at_the_same_epoch(release, tmp_path):
    base = tmp_path / "a.yaml"
    base.write_text(
        "name: run-a\nmodel: {num_classes: 2}\ndata: {kind: folders}\noutput_dir: "
        + str(tmp_path / "runs")
        + "\nbackbone_weights: enc.safetensors\ndistill: {teacher: t, weight: 0.5}\n"
    )
    other = tmp_path / "b.yaml"
    other.write_text("base: a.yaml\nname: run-b\nbackbone_weights: IMAGENET1K_V1\ndistill: null\n")
    for name, miou in (("run-a", 40.0), ("run-b", 45.0)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        records = [
            {
                "epoch": 1,
                "step": 10,
                "loss": 2.0,
                "val_mIoU": 10.0,
                "val_found": 1,
                "val_found_small": 1,
                "val_outside": 50,
            },
            {
                "epoch": 2,
                "step": 20,
                "loss": 1.5,
                "val_mIoU": miou,
                "val_found": 55,
                "val_found_small": 20,
                "val_outside": 30,
            },
            {
                "epoch": 3,
                "step": 30,
                "loss": 1.0,
                "val_mIoU": 99.0,
                "val_found": 99,
                "val_found_small": 99,
                "val_outside": 1,
            },
        ]
        (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = release.comparison_table([base, other], epoch=2).splitlines()
    assert rows[2].startswith(
        "| run-a | teacher's (DeepLab) | KL, weight 0.5 | 40.00 | 55.0% | 20.0% | 30.0% | 1.500 |"
    )
    assert rows[3].startswith("| run-b | ImageNet (torchvision) | none | 45.00 |")
    assert rows[3].endswith(f"`refinenet train {other.as_posix()} --until-epoch 2` |")
    with pytest.raises(SystemExit, match="no validated epoch 4"):
        release.comparison_table([base], epoch=4)


def test_an_extended_schedule_is_reproduced_by_one_command_per_schedule(release, tmp_path):
    """A run trained on the config's 16 epochs and then extended with --epochs 32 cannot be
    reproduced by one 32-epoch run (its rate decayed to zero at epoch 16): the card lists both."""
    config = Path("configs/x.yaml")
    early = [{"epoch": e} for e in (1, 2)]  # logged before the trainer recorded its schedule
    extended = [{"epoch": e, "schedule_epochs": 4} for e in (3, 4)]
    assert release.train_commands(config, 2, early, None) == ["refinenet train configs/x.yaml"]
    assert release.train_commands(config, 2, early + extended, None) == [
        "refinenet train configs/x.yaml",
        "refinenet train configs/x.yaml --epochs 4",
    ]
    # Released after epoch 3: the extension stops there; after epoch 2 it never happened.
    assert (
        release.train_commands(config, 2, early + extended, 3)[-1]
        == "refinenet train configs/x.yaml --epochs 4 --until-epoch 3"
    )
    assert release.train_commands(config, 2, early + extended, 2) == ["refinenet train configs/x.yaml"]
    # A config's own schedule released early stops early too.
    assert release.train_commands(config, 2, early, 1) == ["refinenet train configs/x.yaml --until-epoch 1"]
    # A schedule shortened mid-run (16 epochs, then --epochs 10 after the first) stops the first
    # command where the shorter one took over.
    shortened = [{"epoch": 1, "schedule_epochs": 16}, *({"epoch": e, "schedule_epochs": 10} for e in (2, 3))]
    assert release.train_commands(config, 16, shortened, None) == [
        "refinenet train configs/x.yaml --until-epoch 1",
        "refinenet train configs/x.yaml --epochs 10",
    ]
    # A resumed run logs an epoch again: the last record of it counts.
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}, {"epoch": 2, "loss": 0.5, "schedule_epochs": 4}]
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert release.run_epochs(run) == [lines[0], lines[2]]


def test_a_fine_tune_is_reproduced_by_training_its_starting_point_first(release, tmp_path):
    """init_from: runs/<name>/model-e<N> means "that run's first N epochs, then this config"."""
    runs = tmp_path / "runs"
    (tmp_path / "main.yaml").write_text(
        f"name: main\nmodel: {{num_classes: 2}}\ndata: {{}}\nepochs: 2\noutput_dir: {runs}\n"
    )
    (runs / "main").mkdir(parents=True)
    records = [{"epoch": 1}, {"epoch": 2}, {"epoch": 3, "schedule_epochs": 4}]
    (runs / "main" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tune = tmp_path / "tune.yaml"
    tune.write_text(f"base: main.yaml\nname: tune\ninit_from: {runs}/main/model-e2\n")
    main = (tmp_path / "main.yaml").as_posix()
    assert release.reproduce_commands(tune, [{"epoch": 1}], None) == [
        f"refinenet train {main}",
        f"refinenet train {tune.as_posix()}",
    ]
    tune.write_text(f"base: main.yaml\nname: tune\ninit_from: {runs}/main/model-e3\n")
    assert release.reproduce_commands(tune, [{"epoch": 1}, {"epoch": 2}], 1) == [
        f"refinenet train {main}",
        f"refinenet train {main} --epochs 4 --until-epoch 3",
        f"refinenet train {tune.as_posix()} --until-epoch 1",
    ]
    tune.write_text(f"base: main.yaml\nname: tune\ninit_from: {runs}/elsewhere/model-e3\n")
    with pytest.raises(SystemExit, match="init_from"):
        release.reproduce_commands(tune, [], None)


def test_a_soup_lists_each_members_share_and_how_to_train_it(release, tmp_path):
    """Moving from the run's weights 2/3 of the way to A, then 1/4 of the way to B, averages
    them as run 1/4 (1/3 x 3/4), A 1/2 (2/3 x 3/4), B 1/4; a member that is a run's model-e<N>
    brings the commands that train it, once even when members share a run."""
    run, a, b = Path("runs/x/model-e1"), Path("elsewhere/release"), Path("runs/x/model-e2")
    shares = release.soup_shares([run, a, b], [2 / 3, 1 / 4])
    assert [folder for folder, _ in shares] == [run, a, b]
    assert [share for _, share in shares] == pytest.approx([1 / 4, 1 / 2, 1 / 4])
    with pytest.raises(ValueError):
        release.soup_shares([run, a], [0.5, 0.5])  # a weight with no member
    runs = tmp_path / "runs"
    (tmp_path / "x.yaml").write_text(f"name: x\nmodel: {{num_classes: 2}}\ndata: {{}}\nepochs: 2\noutput_dir: {runs}\n")
    (runs / "x").mkdir(parents=True)
    (runs / "x" / "log.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2)))
    config = tmp_path / "x.yaml"
    assert release.member_commands(config, runs / "x" / "model-e2") == [f"refinenet train {config.as_posix()}"]
    assert release.member_commands(config, tmp_path / "elsewhere" / "release") == []  # not a run's folder
    assert release.member_commands(config, Path(release.__file__).parent) == []  # this very checkout
    lines = [
        *release.member_commands(config, runs / "x" / "model-e1"),
        *release.member_commands(config, runs / "x" / "model-e2"),
    ]
    assert release.unique(lines + lines) == [
        f"refinenet train {config.as_posix()} --until-epoch 1",
        f"refinenet train {config.as_posix()}",
    ]


def test_a_lost_run_folder_is_read_from_the_log_a_release_kept(release, tmp_path, monkeypatch):
    """Run folders stay out of git: when a chained run's folder is gone, the reproduce commands and
    the comparison come from the copy of its log a release kept, and a new release keeps copies of
    every log its card cites (the chain and the comparison runs)."""
    weights = tmp_path / "weights"
    monkeypatch.setattr(release, "WEIGHTS_ROOT", weights)
    runs = tmp_path / "runs"
    (tmp_path / "main.yaml").write_text(
        f"name: main\nmodel: {{num_classes: 2}}\ndata: {{}}\nepochs: 16\noutput_dir: {runs}\n"
    )
    tune = tmp_path / "tune.yaml"
    tune.write_text(f"base: main.yaml\nname: tune\ninit_from: {runs}/main/model-e10\n")
    other = tmp_path / "other.yaml"
    other.write_text("base: main.yaml\nname: other\n")
    assert release.chain(tune) == [tune, tmp_path / "main.yaml"]
    assert release.chain(other) == [other]

    # "main" was trained one epoch on 16, then on a 10-epoch schedule; its folder is gone and
    # only an earlier release's copy of its log is left. "tune" has its own folder.
    kept = weights / "old-release" / "training-logs"
    kept.mkdir(parents=True)
    records = [{"epoch": 1, "schedule_epochs": 16}, *({"epoch": e, "schedule_epochs": 10} for e in range(2, 11))]
    (kept / "main.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (runs / "tune").mkdir(parents=True)
    (runs / "tune" / "log.jsonl").write_text(json.dumps({"epoch": 1, "val_mIoU": 50.0}) + "\n")
    assert release.run_log(runs / "main") == kept / "main.jsonl"
    assert release.run_log(runs / "tune") == runs / "tune" / "log.jsonl"
    main = (tmp_path / "main.yaml").as_posix()
    assert release.reproduce_commands(tune, release.run_epochs(runs / "tune"), None) == [
        f"refinenet train {main} --until-epoch 1",
        f"refinenet train {main} --epochs 10",
        f"refinenet train {tune.as_posix()}",
    ]

    out = weights / "new-release"
    copies = release.keep_logs(out, [*release.chain(tune), other, tmp_path / "main.yaml"])
    # "other" has no log anywhere: nothing to copy, and the card does not claim one.
    assert copies == [out / "training-logs" / "tune.jsonl", out / "training-logs" / "main.jsonl"]
    assert (out / "training-logs" / "main.jsonl").read_text() == (kept / "main.jsonl").read_text()
    assert (out / "training-logs" / "tune.jsonl").read_text() == (runs / "tune" / "log.jsonl").read_text()
    # Releasing into the folder that holds the kept copy leaves the copy as it was.
    assert release.keep_logs(weights / "old-release", [tmp_path / "main.yaml"]) == [kept / "main.jsonl"]
    assert len((kept / "main.jsonl").read_text().splitlines()) == 10


def test_a_release_keeps_the_eval_json_of_the_models_beside_it(release, tmp_path):
    """The reference rows of a card are kept as files named after their rows; a later release
    replaces them (the previous release's row moves down), and can be fed its own kept copies."""
    out = tmp_path / "release"
    teacher = {"mIoU": 89.7, "found": 72.7, "command": "python scripts/eval_teacher.py --split val"}
    old = {"mIoU": 66.2, "found": 60.9, "command": "refinenet eval --model old"}
    copies = release.keep_references(out, [("teacher", teacher), ("previous release (os16 epoch 3)", old)])
    assert copies == [out / "references" / "teacher.json", out / "references" / "previous-release-os16-epoch-3.json"]
    assert json.loads(copies[1].read_text()) == old

    kept = json.loads(copies[0].read_text())
    release.keep_references(out, [("teacher", kept), ("release before", old)])
    assert sorted(p.name for p in (out / "references").iterdir()) == ["release-before.json", "teacher.json"]
    assert json.loads((out / "references" / "teacher.json").read_text()) == teacher
    # A release without references leaves no earlier release's copies behind to mislead.
    assert release.keep_references(out, []) == [] and not (out / "references").exists()


def test_a_soup_member_from_another_checkout_comes_with_the_command_that_recreates_it(release, tmp_path, monkeypatch):
    """A past release's folder, checked out beside the repository at its commit, is reproduced by
    checking that commit out again at the same place, relative to where the release command runs."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    old = tmp_path / "previous-release"
    (old / "weights" / "model").mkdir(parents=True)
    (old / "weights" / "model" / "config.json").write_text("{}")
    subprocess.run([*git, "init", "-q", str(old)], check=True)
    subprocess.run([*git, "-C", str(old), "add", "."], check=True)
    subprocess.run([*git, "-C", str(old), "commit", "-qm", "release"], check=True)
    commit = subprocess.run(
        ["git", "-C", str(old), "log", "-1", "--format=%h"], capture_output=True, text=True, check=True
    ).stdout.strip()
    here = tmp_path / "repo"
    here.mkdir()
    monkeypatch.chdir(here)
    config = here / "x.yaml"
    assert release.member_commands(config, old / "weights" / "model") == [
        f"git worktree add ../previous-release {commit}"
    ]
