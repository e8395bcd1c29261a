"""Hub-layout folders, strict loading, and the real download/upload path over HTTP.

Downloads go through huggingface_hub's own ``hf_hub_download`` against ``tests/hub_server.py``
on 127.0.0.1. The main download test runs in a subprocess with ``HF_ENDPOINT``/``HF_HOME`` set,
exactly as a user would configure it (huggingface_hub reads them at import); the other tests
pass ``endpoint=``/``cache_dir=`` to the same functions in-process, to stay fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_model
from hub_server import LocalHub
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file, save_file

import refinenet
from refinenet import hub, zoo
from refinenet.cli import main as cli_main
from refinenet.hub import (
    BundledFallbackWarning,
    IntegrityError,
    ModelNotFoundError,
    StrictLoadError,
    WeightsError,
    from_pretrained,
    load_folder,
    push_to_hub,
    save_pretrained,
)

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """Run every test online whatever the developer's environment says (offline tests opt in)."""
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def logits(model, seed: int = 0) -> torch.Tensor:
    x = torch.randn(1, 3, 72, 88, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_folder(tmp_path) -> tuple[torch.nn.Module, Path]:
    model = make_tiny_model(seed=1)
    return model, save_pretrained(model, tmp_path / "tiny", metrics={"test_mean_iou": 61.25})


# --------------------------------------------------------------------------- folders


def test_save_then_load_gives_bit_identical_logits_for_every_class(tmp_path):
    full = make_tiny_model(seed=2)
    light = refinenet.lw_refinenet_mobilenetv2(num_classes=3, widths=[16] * 4).eval()
    for name, model in (("full", full), ("light", light)):
        folder = tmp_path / name
        refinenet.save_pretrained(model, folder)
        loaded = refinenet.from_pretrained(folder)  # the caller never names the class
        assert type(loaded) is type(model) and not loaded.training
        assert torch.equal(logits(loaded), logits(model))
        assert loaded.config.to_dict() == model.config.to_dict()
        assert loaded.weights_source.source == "local folder"


def test_folder_layout_and_model_card(tiny_folder):
    model, folder = tiny_folder
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text()) == model.config.to_dict()
    stored = load_file(str(folder / "model.safetensors"))
    assert stored.keys() == model.state_dict().keys()
    card = (folder / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["pipeline_tag"] == "image-segmentation"
    assert {"library_name", "license", "metrics", "tags"} <= set(meta)
    assert meta["metrics"] == ["test_mean_iou"] and "61.25" in body
    assert f"{refinenet.count_parameters(model):,}" in body
    assert "from_pretrained" in body


def test_the_card_names_an_output_stride_other_than_the_papers():
    from refinenet.config import RefineNetConfig
    from refinenet.modelcard import render_model_card

    config = RefineNetConfig(architecture="refinenet", backbone="mobilenetv2", num_classes=3)
    assert "output stride" not in render_model_card(config)
    dilated = render_model_card(
        RefineNetConfig(architecture="refinenet", backbone="mobilenetv2", num_classes=3, output_stride=16)
    )
    assert "| output stride | 16: the deepest backbone level runs dilated" in dilated
    assert "RefineNet-4 at 1/16" in dilated


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_loading_is_strict_and_names_the_keys(tiny_folder, change):
    _, folder = tiny_folder
    tensors = load_file(str(folder / "model.safetensors"))
    if change == "extra":
        tensors["refine4.aux.weight"] = torch.zeros(2)
        expected = "unexpected keys (1): refine4.aux.weight"
    elif change == "missing":
        del tensors["refine2.crp.stages.3.weight"]
        expected = "missing keys (1): refine2.crp.stages.3.weight"
    else:
        tensors["classifier.bias"] = torch.zeros(7)
        expected = "classifier.bias: (7,) vs (5,)"
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(StrictLoadError) as info:
        load_folder(folder)
    assert expected in str(info.value)


def test_bad_folders_get_clear_errors(tmp_path, tiny_folder):
    _, folder = tiny_folder
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "model.pth.tar").write_bytes(b"x")
    with pytest.raises(WeightsError, match="config.json is missing.*refinenet convert"):
        load_folder(legacy)
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_folder(folder)
    (folder / "config.json").write_text('{"architecture": "refinenet", "colour": 3}')
    with pytest.raises(WeightsError, match="unknown fields: colour"):
        load_folder(folder)


def test_save_refuses_tensors_that_do_not_fit_and_existing_files(tmp_path):
    model = make_tiny_model()
    state = model.state_dict()
    del state["classifier.bias"]
    with pytest.raises(StrictLoadError, match="classifier.bias"):
        save_pretrained(state, tmp_path / "bad", model.config)
    assert not (tmp_path / "bad" / "model.safetensors").exists()
    save_pretrained(model, tmp_path / "ok")
    with pytest.raises(FileExistsError):
        save_pretrained(model, tmp_path / "ok", overwrite=False)


def test_unknown_names_list_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        from_pretrained("no-such-model")
    text = str(info.value)
    assert "local folder" in text and "ORG/NAME" in text
    assert "known: " in text and "camvid-refinenet-mobilenetv2" in text
    legacy = tmp_path / "model.pth"
    legacy.write_bytes(b"x")
    with pytest.raises(WeightsError, match="is a file.*refinenet convert"):
        from_pretrained(legacy)


# --------------------------------------------------------------------------- the zoo's bundled copies


def register(monkeypatch, model_id: str, **fields) -> zoo.ZooEntry:
    entry = zoo.ZooEntry(
        model_id=model_id,
        title="test model",
        architecture="refinenet",
        backbone="mobilenetv2",
        dataset="synthetic",
        classes=tuple("abcde"),
        **fields,
    )
    monkeypatch.setitem(zoo.MODELS, model_id, entry)
    return entry


def bundle(weights_dir: Path, model_id: str, model) -> Path:
    return save_pretrained(model, weights_dir / model_id)


def test_unpublished_model_loads_from_the_bundled_copy_without_notice(tmp_path, monkeypatch):
    model = make_tiny_model(seed=4)
    folder = bundle(tmp_path / "weights", "tiny-bundled", model)
    register(monkeypatch, "tiny-bundled", sha256=sha256(folder / "model.safetensors"), bundled=True)
    monkeypatch.setenv(zoo.WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BundledFallbackWarning)
        loaded = refinenet.from_pretrained("tiny-bundled")
    assert loaded.weights_source.source == "bundled copy"
    assert torch.equal(logits(loaded), logits(model))


def test_missing_bundled_folder_and_missing_hash_are_explained(tmp_path, monkeypatch):
    register(monkeypatch, "not-installed", sha256="0" * 64, bundled=True)
    with pytest.raises(ModelNotFoundError) as info:
        from_pretrained("not-installed", weights_dir=tmp_path)
    assert str(tmp_path / "not-installed") in str(info.value) and zoo.WEIGHTS_DIR_ENV in str(info.value)
    assert "not published yet" in str(info.value)
    register(monkeypatch, "no-hash", bundled=True)
    with pytest.raises(WeightsError, match="refinenet models --hash"):
        from_pretrained("no-hash", weights_dir=tmp_path)


def test_tampered_bundled_copy_is_refused(tmp_path, monkeypatch):
    folder = bundle(tmp_path, "tampered", make_tiny_model())
    register(monkeypatch, "tampered", sha256=sha256(folder / "model.safetensors"), bundled=True)
    save_pretrained(make_tiny_model(seed=9), folder)
    with pytest.raises(IntegrityError, match="bundled copy"):
        from_pretrained("tampered", weights_dir=tmp_path)


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def local_hub():
    with LocalHub() as server:
        yield server


def child_env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        # The checkout's package first, not whichever copy is installed (e.g. another worktree's).
        PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]),
        **extra,
    )
    return env


CHILD = """
import sys, torch, refinenet
from refinenet import zoo
if len(sys.argv) > 3:  # register a zoo entry: id, repo id, sha256
    zoo.MODELS[sys.argv[3]] = zoo.ZooEntry(sys.argv[3], "t", "refinenet", "mobilenetv2", "d", (), repo_id=sys.argv[4],
                                          sha256=sys.argv[5], bundled=True)
model = refinenet.from_pretrained(sys.argv[1])
x = torch.randn(1, 3, 72, 88, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    torch.save({"logits": model(x), "source": model.weights_source.source}, sys.argv[2])
"""


def run_child(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )


def test_download_through_hf_endpoint_then_offline_from_cache(tmp_path, local_hub, tiny_folder):
    model, folder = tiny_folder
    commit = local_hub.add_repo("lab/tiny-refinenet", folder)
    env = child_env(tmp_path, local_hub.url)
    done = run_child(tmp_path, env, "lab/tiny-refinenet", str(tmp_path / "out.pt"))
    assert done.returncode == 0, done.stderr
    result = torch.load(tmp_path / "out.pt")
    assert result["source"] == "Hub download"
    assert torch.equal(result["logits"], logits(model))
    requests = list(local_hub.requests)
    assert ("HEAD", "/lab/tiny-refinenet/resolve/main/model.safetensors") in requests
    assert any(m == "GET" and p.startswith("/cdn/lab/tiny-refinenet/") for m, p in requests)
    assert ("GET", f"/lab/tiny-refinenet/resolve/{commit}/config.json") in requests
    snapshot = tmp_path / "hf-home" / "hub" / "models--lab--tiny-refinenet" / "snapshots" / commit
    assert sha256(snapshot / "model.safetensors") == sha256(folder / "model.safetensors")

    offline = run_child(tmp_path, {**env, "HF_HUB_OFFLINE": "1"}, "lab/tiny-refinenet", str(tmp_path / "again.pt"))
    assert offline.returncode == 0, offline.stderr
    again = torch.load(tmp_path / "again.pt")
    assert again["source"] == "Hugging Face cache" and torch.equal(again["logits"], result["logits"])
    assert local_hub.requests == requests  # offline: not a single request


def test_offline_with_empty_cache_falls_back_to_bundled_with_notice(tmp_path, local_hub):
    model = make_tiny_model(seed=5)
    folder = bundle(tmp_path / "weights", "tiny-zoo", model)
    env = child_env(tmp_path, local_hub.url, HF_HUB_OFFLINE="1", REFINENET_WEIGHTS_DIR=str(tmp_path / "weights"))
    done = run_child(
        tmp_path,
        env,
        "tiny-zoo",
        str(tmp_path / "out.pt"),
        "tiny-zoo",
        "lab/tiny-zoo",
        sha256(folder / "model.safetensors"),
    )
    assert done.returncode == 0, done.stderr
    assert "BundledFallbackWarning" in done.stderr and "HF_HUB_OFFLINE" in done.stderr
    result = torch.load(tmp_path / "out.pt")
    assert result["source"] == "bundled copy" and torch.equal(result["logits"], logits(model))
    assert local_hub.requests == []


def test_unknown_repo_gives_a_clear_error(tmp_path, local_hub):
    with pytest.raises(ModelNotFoundError) as info:
        from_pretrained("lab/does-not-exist", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    assert f"{local_hub.url} has no repository lab/does-not-exist" in str(info.value)
    assert "local folder: lab/does-not-exist does not exist" in str(info.value)
    local_hub.add_repo("lab/weights-only", {"model.safetensors": b"x" * 10})
    with pytest.raises(ModelNotFoundError, match="lacks model.safetensors or config.json"):
        from_pretrained("lab/weights-only", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    with pytest.raises(ModelNotFoundError, match="no revision 'v9'"):
        from_pretrained("lab/weights-only", "v9", endpoint=local_hub.url, cache_dir=tmp_path / "cache")


def cached_blobs(cache: Path) -> list[bytes]:
    return [p.read_bytes() for p in cache.rglob("blobs/*") if p.is_file()]


def test_corrupt_download_is_refused_and_does_not_poison_the_cache(tmp_path, local_hub, monkeypatch):
    model = make_tiny_model(seed=6)
    folder = bundle(tmp_path / "weights", "tiny-pub", model)
    good = (folder / "model.safetensors").read_bytes()
    local_hub.add_repo("lab/tiny-pub", folder)
    register(monkeypatch, "tiny-pub", repo_id="lab/tiny-pub", sha256=sha256(folder / "model.safetensors"), bundled=True)
    cache = tmp_path / "cache"
    local_hub.corrupt("lab/tiny-pub", "model.safetensors")
    with pytest.raises(IntegrityError, match="removed from the cache"):  # no silent fallback to the bundled copy
        from_pretrained("tiny-pub", endpoint=local_hub.url, cache_dir=cache, weights_dir=tmp_path / "weights")
    assert all(len(blob) != len(good) for blob in cached_blobs(cache))  # the bad bytes are gone
    assert not list(cache.rglob("snapshots/*/model.safetensors"))

    local_hub.corrupt("lab/tiny-pub", "model.safetensors", enabled=False)  # the server is fixed
    loaded = from_pretrained("tiny-pub", endpoint=local_hub.url, cache_dir=cache, weights_dir=tmp_path / "weights")
    assert loaded.weights_source.source == "Hub download"
    assert torch.equal(logits(loaded), logits(model))
    assert good in cached_blobs(cache)


def test_corrupt_download_of_an_unregistered_repo_fails_the_hub_sha256(tmp_path, local_hub, tiny_folder):
    _, folder = tiny_folder
    local_hub.add_repo("someone/model", folder)
    local_hub.corrupt("someone/model", "model.safetensors")
    with pytest.raises(IntegrityError, match="expected " + sha256(folder / "model.safetensors")):
        from_pretrained("someone/model", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("snapshots/*/model.safetensors"))


def test_corrupted_cache_is_healed_by_a_new_download(tmp_path, local_hub, tiny_folder):
    model, folder = tiny_folder
    local_hub.add_repo("lab/heal", folder)
    cache = tmp_path / "cache"
    from_pretrained("lab/heal", endpoint=local_hub.url, cache_dir=cache)
    blob = Path(os.path.realpath(next(cache.rglob("snapshots/*/model.safetensors"))))
    blob.write_bytes(b"\x00" * blob.stat().st_size)  # bit rot on disk
    loaded = from_pretrained("lab/heal", endpoint=local_hub.url, cache_dir=cache)
    assert loaded.weights_source.source == "Hub download"
    assert any("removed from the cache" in a for a in loaded.weights_source.attempts)
    assert torch.equal(logits(loaded), logits(model))


def test_pinned_revision_ignores_newer_commits(tmp_path, local_hub, monkeypatch):
    first, second = make_tiny_model(seed=7), make_tiny_model(seed=8)
    save_pretrained(first, tmp_path / "v1")
    save_pretrained(second, tmp_path / "v2")
    commit = local_hub.add_repo("lab/pinned", tmp_path / "v1")
    local_hub.add_repo("lab/pinned", tmp_path / "v2")  # main moves on
    register(
        monkeypatch,
        "pinned",
        repo_id="lab/pinned",
        revision=commit,
        sha256=sha256(tmp_path / "v1" / "model.safetensors"),
    )
    loaded = from_pretrained("pinned", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    assert loaded.weights_source.revision == commit
    assert torch.equal(logits(loaded), logits(first))
    latest = from_pretrained("lab/pinned", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    assert torch.equal(logits(latest), logits(second))


def _fallback_case(tmp_path, monkeypatch, model_id):
    model = make_tiny_model(seed=3)
    folder = bundle(tmp_path / "weights", model_id, model)
    register(
        monkeypatch, model_id, repo_id=f"lab/{model_id}", sha256=sha256(folder / "model.safetensors"), bundled=True
    )
    return model


def test_endpoint_that_is_not_a_hub_falls_back_to_bundled_with_warning(tmp_path, monkeypatch):
    """A proxy or captive portal answering instead of the Hub: plain 404s, no Hub headers."""
    model = _fallback_case(tmp_path, monkeypatch, "tiny-portal")
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.warns(BundledFallbackWarning, match="could not be reached"):
            loaded = from_pretrained(
                "tiny-portal",
                endpoint=f"http://127.0.0.1:{server.server_address[1]}",
                cache_dir=tmp_path / "cache",
                weights_dir=tmp_path / "weights",
            )
    finally:
        server.shutdown()
        server.server_close()
    assert loaded.weights_source.source == "bundled copy" and torch.equal(logits(loaded), logits(model))


@pytest.mark.slow
def test_unreachable_hub_falls_back_to_bundled_with_warning(tmp_path, monkeypatch):
    """Slow: huggingface_hub retries a refused connection with backoff (about 25 s) first."""
    model = _fallback_case(tmp_path, monkeypatch, "tiny-away")
    with LocalHub() as server:
        closed = server.url  # nothing listens here once the server is gone
    with pytest.warns(BundledFallbackWarning, match="could not be reached"):
        loaded = from_pretrained(
            "tiny-away", endpoint=closed, cache_dir=tmp_path / "cache", weights_dir=tmp_path / "weights"
        )
    assert loaded.weights_source.source == "bundled copy" and torch.equal(logits(loaded), logits(model))


# --------------------------------------------------------------------------- publishing


def test_push_then_download_round_trip(tmp_path, local_hub, tiny_folder):
    model, folder = tiny_folder
    result = push_to_hub(folder, "me/tiny", token="hf_test", endpoint=local_hub.url, revision="v1")
    assert result.commit == local_hub.repos["me/tiny"].branches["v1"]
    assert set(local_hub.files("me/tiny", "v1")) == {".gitattributes", "README.md", "config.json", "model.safetensors"}
    assert result.sha256 == sha256(folder / "model.safetensors") and result.sha256 in result.zoo_fields()
    loaded = from_pretrained("me/tiny", result.commit, endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    assert torch.equal(logits(loaded), logits(model))


def test_push_a_model_writes_its_folder_first(tmp_path, local_hub):
    model = make_tiny_model(seed=11)
    result = push_to_hub(model, "me/from-model", token="hf_test", endpoint=local_hub.url)
    assert result.commit == local_hub.repos["me/from-model"].branches["main"]
    assert set(local_hub.files("me/from-model")) == {".gitattributes", "README.md", "config.json", "model.safetensors"}
    assert "me/from-model" in local_hub.files("me/from-model")["README.md"].decode()  # the card names the repo
    loaded = from_pretrained("me/from-model", result.commit, endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    assert torch.equal(logits(loaded), logits(model))


def test_push_refuses_unloadable_folders_before_any_request(tmp_path, local_hub, tiny_folder):
    _, folder = tiny_folder
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["classifier.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(StrictLoadError):
        push_to_hub(folder, "me/broken", token="hf_test", endpoint=local_hub.url)
    with pytest.raises(ValueError, match="not a Hub repo id"):
        push_to_hub(folder, "no-namespace", endpoint=local_hub.url)
    assert local_hub.requests == []


def test_push_without_credentials_is_rejected(local_hub, tiny_folder):
    _, folder = tiny_folder
    with pytest.raises(HfHubHTTPError) as info:
        push_to_hub(folder, "me/anonymous", token=False, endpoint=local_hub.url)
    assert info.value.response.status_code == 401
    assert "me/anonymous" not in local_hub.repos


def test_cli_push_dry_run_and_errors(tmp_path, local_hub, tiny_folder, capsys):
    _, folder = tiny_folder
    assert cli_main(["push", str(folder), "--repo-id", "me/cli", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload README.md, config.json, model.safetensors" in out
    assert sha256(folder / "model.safetensors") in out
    assert cli_main(["push", str(tmp_path / "nowhere"), "--repo-id", "me/cli", "--dry-run"]) == 1
    assert "error: cannot push" in capsys.readouterr().err
    assert local_hub.requests == []


def test_cli_push_uploads_through_hf_endpoint(tmp_path, local_hub, tiny_folder):
    _, folder = tiny_folder
    env = child_env(tmp_path, local_hub.url)
    entry = "import sys; from refinenet.cli import main; sys.exit(main(sys.argv[1:]))"
    cli = [sys.executable, "-c", entry, "push", str(folder), "--repo-id", "me/cli", "--token", "hf_test"]
    pushed = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    commit = local_hub.repos["me/cli"].branches["main"]
    assert f"commit {commit}" in pushed.stdout and 'zoo entry fields: repo_id="me/cli"' in pushed.stdout
    assert local_hub.files("me/cli")["model.safetensors"] == (folder / "model.safetensors").read_bytes()
