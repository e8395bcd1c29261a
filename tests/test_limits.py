"""What an untrusted model folder or visitor can ask for: config bounds, weight budgets, the
safetensors header, the hosting policy and the model cache's memory of names."""

from __future__ import annotations

import json
import struct
import threading

import pytest
import torch
from safetensors.torch import save_file

import refinenet
from refinenet.config import MAX_CONFIG_BYTES, ConfigError, RefineNetConfig
from refinenet.folder import (
    TooLargeError,
    WeightsError,
    check_weight_budget,
    load_folder,
    safetensors_data_bytes,
    weight_bytes,
)
from refinenet.serving import REFUSAL, HostingPolicy, SegmenterCache

SMALL = dict(backbone="mobilenetv2", num_classes=3, widths=[16, 16, 16, 16])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"crp_stages": 1_000_000}, "crp_stages"),
        ({"adapt_rcus": 100_000}, "adapt_rcus"),
        ({"output_rcus": -1}, "output_rcus"),
        ({"input_size": 0}, "input_size"),
        ({"num_classes": 10**9}, "num_classes"),
        ({"widths": [16, 16, 16, 10**6]}, "widths[3]"),
        ({"widths": [16] * 5}, "widths"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"kernel_size": True}, "kernel_size"),
        ({"backbone": "../../etc/passwd"}, "backbone"),
        ({"cascade": [[1, 1, 1, 1]]}, "cascade"),
        ({"dropout": 2}, "dropout"),
        ({"std": [0, 1, 1]}, "std"),
        ({"palette": [[0, 0, 999]] * 3}, "palette"),
        ({"description": "x" * 10_000}, "description"),
        ({"output_stride": 8}, "output_stride"),
        ({"output_stride": "16"}, "output_stride"),
        ({"output_stride": 16, "backbone": "mobilenetv2-lw-authors"}, "output_stride"),
    ],
)
def test_a_config_outside_its_bounds_is_refused_naming_the_field(change, field):
    with pytest.raises(ConfigError) as caught:
        RefineNetConfig.from_dict({**SMALL, **change})
    assert str(caught.value).startswith(field), caught.value
    assert len(str(caught.value)) < 200


def test_output_stride_is_written_only_when_it_is_not_the_papers():
    """Folders at the paper's 32 stay readable by versions from before the field."""
    assert "output_stride" not in RefineNetConfig(**SMALL).to_dict()
    dilated = RefineNetConfig(**SMALL, output_stride=16)
    assert dilated.to_dict()["output_stride"] == 16
    assert RefineNetConfig.from_dict(dilated.to_dict()) == dilated


def test_every_published_layout_is_inside_the_bounds():
    for name in refinenet.list_models():
        config = refinenet.get_model(name, num_classes=21).config  # builds, so the config passed
        assert RefineNetConfig.from_dict(config.to_dict()) == config


def test_unknown_fields_are_listed_briefly(tmp_path):
    with pytest.raises(ConfigError) as caught:
        RefineNetConfig.from_dict({**SMALL, **{f"k{i:05d}": 1 for i in range(5000)}})
    assert "k00000, k00001, k00002 (and 4997 more)" in str(caught.value)


def test_a_config_file_too_large_to_be_one_is_not_parsed(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(" " * (MAX_CONFIG_BYTES + 1) + "{}")
    with pytest.raises(ConfigError, match="a config holds a few kilobytes"):
        RefineNetConfig.load(path)


def test_the_weight_budget_is_worked_out_from_the_config_without_allocating():
    model = refinenet.refinenet_mobilenetv2(**{k: v for k, v in SMALL.items() if k != "backbone"})
    expected = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    assert weight_bytes(model.config) == expected
    check_weight_budget(model.config, expected)
    with pytest.raises(TooLargeError, match="accepts at most"):
        check_weight_budget(model.config, expected - 1)
    huge = RefineNetConfig(backbone="mobilenetv2", widths=[2048] * 4, crp_stages=8, adapt_rcus=8, output_rcus=8)
    with pytest.raises(TooLargeError):  # about 136 GB: refused on the meta device, nothing allocated
        check_weight_budget(huge, 4 * 1024**3)


def _safetensors_with_header(path, header: dict, data: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_the_safetensors_header_is_checked_before_the_file_is_mapped(tmp_path):
    real = tmp_path / "real.safetensors"
    save_file({"a": torch.zeros(3, 5), "b": torch.zeros(7, dtype=torch.float16)}, str(real))
    assert safetensors_data_bytes(real, 10**6) == 3 * 5 * 4 + 7 * 2
    claims = tmp_path / "claims.safetensors"
    _safetensors_with_header(
        claims, {"x": {"dtype": "F32", "shape": [6_200_000_000], "data_offsets": [0, 24_800_000_000]}}
    )
    with pytest.raises(TooLargeError, match="declares 24,800 MB"):
        safetensors_data_bytes(claims, 10**9)
    truncated = tmp_path / "truncated.safetensors"
    _safetensors_with_header(truncated, {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(WeightsError, match="truncated or padded"):
        safetensors_data_bytes(truncated, 10**9)
    long_header = tmp_path / "long.safetensors"
    long_header.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(WeightsError, match="header length"):
        safetensors_data_bytes(long_header, 10**9)


def test_load_folder_refuses_weights_above_its_budget(tmp_path):
    model = refinenet.refinenet_mobilenetv2(**{k: v for k, v in SMALL.items() if k != "backbone"})
    folder = refinenet.save_pretrained(model, tmp_path / "m")
    with pytest.raises(TooLargeError):
        load_folder(folder, max_weight_bytes=1_000_000)
    assert isinstance(load_folder(folder), refinenet.RefineNet)


def test_the_public_policy_admits_zoo_ids_and_allowed_repos_only():
    zoo_id = refinenet.list_pretrained()[0].model_id
    public = HostingPolicy.for_public(["lab/allowed"])
    for name in (zoo_id, "lab/allowed"):
        assert public.admits(name)
    for name in (
        "/etc/passwd",
        "../x",
        "refinenet/weights",
        "lab/other",
        "lab/allowed\n",
        "lab/allowed\x00",
        "a" * 300,
    ):
        assert not public.admits(name), name
    with pytest.raises(PermissionError, match=REFUSAL):
        public.load("/etc")
    assert HostingPolicy().admits("/any/folder")  # local mode: a developer's own machine


def test_the_policy_follows_the_space_environment(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("REFINENET_ALLOWED_REPOS", "org/a, org/b")
    assert not HostingPolicy.from_environment().public
    monkeypatch.setenv("SPACE_ID", "someone/refinenet-lab")
    policy = HostingPolicy.from_environment(allowed_repos=["org/c"])
    assert policy.public and policy.allowed_repos == {"org/a", "org/b", "org/c"}
    assert not HostingPolicy.from_environment(public=False).public


def test_the_cache_keeps_its_pinned_model_and_forgets_failed_names():
    tiny = refinenet.refinenet_mobilenetv2(num_classes=3, widths=[8, 8, 8, 8]).eval()

    def loader(name: str):
        if name.startswith("bad"):
            raise ValueError("no such model")
        return tiny

    cache = SegmenterCache(loader=loader, capacity=2)
    cache.get("default")
    cache.pin("default")
    for name in ("a", "b", "c"):
        cache.get(name)
    assert "default" in cache.loaded() and len(cache.loaded()) == 2
    for i in range(50):
        with pytest.raises(ValueError):
            cache.get(f"bad-{i}")
    assert cache._loading == {}, "a failed name leaves nothing behind"
    # Concurrent loads of one name still load it once.
    calls = []
    cache.loader = lambda name: calls.append(name) or tiny
    threads = [threading.Thread(target=cache.get, args=("shared",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["shared"]
