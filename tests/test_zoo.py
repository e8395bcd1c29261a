"""The model zoo registry: its invariants, the bundled-weights directory, and hashing."""

from __future__ import annotations

import hashlib
import re

import pytest
from conftest import make_tiny_model

from refinenet import folder as model_folder
from refinenet import zoo
from refinenet.backbones import BACKBONES
from refinenet.cli import main as cli_main
from refinenet.config import ARCHITECTURES, RefineNetConfig
from refinenet.folder import save_pretrained


def test_every_entry_is_consistent():
    assert zoo.MODELS, "the zoo lists the project's models"
    for model_id, entry in zoo.MODELS.items():
        assert entry.model_id == model_id
        assert entry.architecture in ARCHITECTURES and entry.backbone in BACKBONES
        assert entry.classes and entry.dataset and entry.title
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        if entry.repo_id is not None:  # published: pinned to a commit and verifiable
            assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry.repo_id)
            assert entry.revision is not None and re.fullmatch(r"[0-9a-f]{40}", entry.revision)
            assert entry.sha256 is not None
        else:
            assert entry.revision is None, "a revision without a repo id points nowhere"
        assert entry.repo_id is not None or entry.bundled, f"{model_id} can be loaded from nowhere"


def test_bundled_copies_that_are_installed_match_their_entries():
    """For every bundled folder present: the sha256 and the metadata agree with the registry."""
    for entry in zoo.list_pretrained():
        folder = zoo.bundled_folder(entry.model_id)
        if not entry.bundled or not (folder / zoo.WEIGHTS_NAME).is_file():
            continue
        assert entry.sha256 == zoo.hash_folder(folder), f"update the sha256 of {entry.model_id}"
        config = RefineNetConfig.load(folder / model_folder.CONFIG_NAME)
        assert (config.architecture, config.backbone) == (entry.architecture, entry.backbone)
        assert tuple(config.class_names) == entry.classes
        assert (folder / model_folder.CARD_NAME).is_file()


def test_weights_dir_override_order(tmp_path, monkeypatch):
    monkeypatch.delenv(zoo.WEIGHTS_DIR_ENV, raising=False)
    default = zoo.weights_dir()
    assert default.parts[-2:] == ("refinenet", "weights")
    monkeypatch.setenv(zoo.WEIGHTS_DIR_ENV, str(tmp_path / "env"))
    assert zoo.weights_dir() == tmp_path / "env"
    assert zoo.weights_dir(tmp_path / "arg") == tmp_path / "arg"
    assert zoo.bundled_folder("m", tmp_path) == tmp_path / "m"


def test_hash_folder_and_command_line(tmp_path, capsys):
    folder = save_pretrained(make_tiny_model(), tmp_path / "m")
    expected = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert zoo.hash_folder(folder) == expected
    assert cli_main(["models", "--hash", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == expected
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        zoo.hash_folder(tmp_path)


def test_check_flags_a_bundled_copy_with_the_wrong_hash(tmp_path, monkeypatch, capsys):
    folder = save_pretrained(make_tiny_model(), tmp_path / "checked")
    monkeypatch.setenv(zoo.WEIGHTS_DIR_ENV, str(tmp_path))
    entry = zoo.ZooEntry("checked", "t", "refinenet", "mobilenetv2", "d", ("a",), sha256="f" * 64, bundled=True)
    monkeypatch.setitem(zoo.MODELS, "checked", entry)
    assert cli_main(["models", "--check"]) == 1
    assert "BAD checked" in capsys.readouterr().out
    fixed = zoo.ZooEntry(
        "checked", "t", "refinenet", "mobilenetv2", "d", ("a",), sha256=zoo.hash_folder(folder), bundled=True
    )
    monkeypatch.setitem(zoo.MODELS, "checked", fixed)
    assert cli_main(["models", "--check"]) == 0


def test_listing_says_what_is_published_and_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(zoo.WEIGHTS_DIR_ENV, str(tmp_path))  # an empty weights directory
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    for entry in zoo.list_pretrained():
        line = next(line for line in out.splitlines() if line.startswith(entry.model_id + ":"))
        assert ("not on the Hub yet" in line) == (entry.repo_id is None)
        assert ("(folder missing)" in line) == entry.bundled


def test_unknown_id_names_the_known_ones():
    with pytest.raises(KeyError, match="camvid-lw-refinenet-mobilenetv2"):
        zoo.get_entry("imagenet-vit")


def test_family_members_come_in_table_order(monkeypatch):
    def entry(model_id: str, family: str | None, classes=("a", "b")) -> zoo.ZooEntry:
        return zoo.ZooEntry(model_id, "t", "refinenet", "mobilenetv2", "d", classes, family=family)

    table = [entry("c4", "abl"), entry("other", None), entry("c2", "abl"), entry("x", "xyz"), entry("c1", "abl")]
    monkeypatch.setattr(zoo, "MODELS", {e.model_id: e for e in table})
    assert [e.model_id for e in zoo.family_members("abl")] == ["c4", "c2", "c1"]
    assert [e.model_id for e in zoo.family_members("xyz")] == ["x"]
    assert zoo.family_members("none-such") == []


def test_a_family_shares_its_classes_and_data_set():
    """The app compares a family's models pixel by pixel: they must answer the same question."""
    families = {entry.family for entry in zoo.MODELS.values() if entry.family is not None}
    for family in families:
        members = zoo.family_members(family)
        assert len({m.classes for m in members}) == 1 and len({m.dataset for m in members}) == 1, family
        assert all(m.sha256 is not None for m in members), "a family lists trained weights only"
    assert len(zoo.family_members(zoo.ABLATION_FAMILY)) != 1, "a family of one compares nothing"


def test_the_bundled_ablation_family_fits_in_20_mb():
    """Issue 20: every variant ships in the package, all of them together in at most 20 MB (the
    files as committed: fp16 decoders, the frozen backbone left out)."""
    members = zoo.family_members(zoo.ABLATION_FAMILY)
    assert members and all(m.bundled for m in members)
    folders = [zoo.bundled_folder(m.model_id) for m in members]
    total = sum(f.stat().st_size for folder in folders for f in folder.iterdir() if f.is_file())
    assert total <= 20_000_000, f"the family's folders take {total / 1e6:.2f} MB"
