"""Training: a step learns, resume is exact, torchrun + gloo runs two processes."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from _datagen import make_folder

from refinenet.models import build_model
from refinenet.train import (
    TrainConfig,
    autocast_dtype_for,
    cpu_has_native_bf16,
    load_checkpoint,
    parameter_groups,
    poly_lr,
    train,
    train_step,
    zero_init_residual_branches,
)

TINY_MODEL = {
    "architecture": "refinenet",
    "backbone": "mobilenetv2",
    "num_classes": 3,
    "widths": [16, 16, 16, 16],
    "dropout": 0.0,
}


def tiny_config(tmp_path, epochs, name="run", **overrides):
    data_root = tmp_path / "data"
    if not data_root.exists():
        make_folder(
            data_root / "train" / "images", data_root / "train" / "labels", [str(i) for i in range(6)], size=(48, 40)
        )
    fields = dict(
        name=name,
        model=dict(TINY_MODEL),
        backbone_weights=None,
        epochs=epochs,
        batch_size=2,
        crop_size=32,
        num_workers=0,
        warmup_steps=2,
        output_dir=str(tmp_path / "runs"),
        data={"kind": "folders", "root": str(data_root), "train_split": "train", "ignore_index": 255},
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def test_one_training_step_lowers_the_loss_on_its_batch():
    torch.manual_seed(0)
    cfg = TrainConfig(name="t", model=dict(TINY_MODEL), data={}, backbone_weights=None)
    model = build_model(cfg.model_config())
    zero_init_residual_branches(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-4, 1e-3))
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 3, (2, 32, 32))
    y[:, :2] = 255

    def loss_now():
        with torch.no_grad():
            logits = torch.nn.functional.interpolate(model(x), size=(32, 32), mode="bilinear")
            return torch.nn.functional.cross_entropy(logits, y, ignore_index=255).item()

    before = train_step(model, optimizer, x, y, ignore_index=255)
    assert before == pytest.approx(loss_now(), rel=0.5)  # sanity: the reported loss is this batch's
    after = loss_now()
    assert after < before, (before, after)


def test_a_bf16_autocast_step_on_the_cpu_follows_the_fp32_gradient_and_keeps_fp32_weights():
    """The precision CPUs with native bf16 train in: from the same weights, its loss and gradient
    must match fp32's closely, and weights, gradients and optimiser state must stay fp32 (bf16
    weights would lose the small updates late in the schedule)."""
    torch.manual_seed(0)
    cfg = TrainConfig(name="t", model=dict(TINY_MODEL), data={}, backbone_weights=None)
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 3, (2, 64, 64))
    runs = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(1)
        # Batch norms on running statistics: with random weights and a batch of two, batch
        # statistics at 1/32 (2x2 values) make the fp32 gradient itself chaotic.
        model = build_model(cfg.model_config()).eval()
        optimizer = torch.optim.SGD(parameter_groups(model, 1e-3, 1e-2), momentum=0.9)
        loss = train_step(model, optimizer, x, y, 255, grad_clip=10.0, autocast_dtype=dtype)
        params = [p for p in model.parameters() if p.grad is not None]
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
        assert all(s["momentum_buffer"].dtype == torch.float32 for s in optimizer.state.values())
        runs[dtype] = loss, torch.cat([p.grad.flatten() for p in params])
    (loss32, grad32), (loss16, grad16) = runs[None], runs[torch.bfloat16]
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grad32, grad16, dim=0) > 0.99
    assert not torch.equal(grad32, grad16)  # the bf16 step really ran in bf16


def test_training_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    assert autocast_dtype_for(cpu, amp=False) is None
    assert autocast_dtype_for(cpu, amp=True) == (torch.bfloat16 if cpu_has_native_bf16() else None)


def test_zero_initialised_rcus_start_as_identity():
    model = build_model(TrainConfig(name="t", model=dict(TINY_MODEL), data={}, backbone_weights=None).model_config())
    zero_init_residual_branches(model)
    x = torch.randn(1, 16, 5, 7)
    for rcu in model.refine1.output_rcus:
        assert torch.equal(rcu(x), x)


def test_poly_schedule_with_warmup():
    assert poly_lr(1.0, 0, 100, 0.9, warmup=10) == pytest.approx(0.1)
    assert poly_lr(1.0, 10, 100, 0.9, warmup=10) == pytest.approx(0.9**0.9)
    assert poly_lr(1.0, 100, 100, 0.9) == 0.0


def test_a_run_cut_off_inside_an_epoch_resumes_there_exactly(tmp_path):
    """Checkpoints inside an epoch: a run stopped after 2 of an epoch's 3 batches, then again one
    batch into the next epoch, ends bit-identical to an uninterrupted run (same batches, ClassMix
    pairs and dropout masks), and logs the same per-epoch losses."""
    torch.set_num_threads(1)
    model = dict(TINY_MODEL, dropout=0.5)  # dropout draws from the global RNG that checkpoints restore
    options = dict(epochs=2, class_mix=0.5, model=model, checkpoint_every=0)
    straight = train(tiny_config(tmp_path, name="straight", **options), progress=False)
    cut = tiny_config(tmp_path, name="cut", **options)
    run = train(cut, max_steps=2, progress=False)
    partial = load_checkpoint(run / "last.pt")
    assert (partial["epoch"], partial["step"], partial["partial_epoch"]["batches"]) == (0, 2, 2)
    assert not (run / "log.jsonl").exists(), "no epoch has ended yet"
    train(cut, max_steps=2, progress=False)  # the last batch of epoch 1, then the first of epoch 2
    assert load_checkpoint(run / "last.pt")["partial_epoch"]["batches"] == 1
    train(cut, progress=False)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["step"] == b["step"] == 6 and b["partial_epoch"] is None
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    logged = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2], "each epoch is logged once, however often it was resumed"


def test_checkpoints_are_written_every_n_steps_inside_an_epoch(tmp_path, monkeypatch):
    """With ``checkpoint_every: 2`` an epoch of 3 steps writes a partial checkpoint after step 2,
    then the epoch's own; with 0, only the epoch's. (The real save runs; the spy only records.)"""
    import refinenet.train as training

    written = []
    real_save = training.save_checkpoint

    def recording_save(state, path):
        partial = state["partial_epoch"]
        written.append((state["step"], None if partial is None else partial["batches"]))
        real_save(state, path)

    monkeypatch.setattr(training, "save_checkpoint", recording_save)
    train(tiny_config(tmp_path, epochs=1, name="every2", checkpoint_every=2), progress=False)
    assert written == [(2, 2), (3, None)]
    written.clear()
    train(tiny_config(tmp_path, epochs=1, name="every0", checkpoint_every=0), progress=False)
    assert written == [(3, None)]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    # With ClassMix on half the images: its random pairs must also be the same after a resume.
    straight = train(tiny_config(tmp_path, epochs=2, name="straight", class_mix=0.5), progress=False)
    # Interrupted after its first epoch (3 steps), then continued by a second call.
    train(tiny_config(tmp_path, epochs=2, name="resumed", class_mix=0.5), max_steps=3, progress=False)
    assert not (tmp_path / "runs" / "resumed" / "model").exists(), "an unfinished run exports no model"
    resumed = train(tiny_config(tmp_path, epochs=2, name="resumed", class_mix=0.5), resume=True, progress=False)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    # Every epoch logs the share of positive CRP inputs of each block (dead-block detector).
    assert set(a["history"][-1]["crp_input_positive"]) == {"RefineNet-4", "RefineNet-3", "RefineNet-2", "RefineNet-1"}
    # A finished run is exported as a model folder.
    assert (straight / "model" / "config.json").exists() and (straight / "model" / "model.safetensors").exists()


def test_yaml_config_rejects_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "model": TINY_MODEL, "data": {}, "epochz": 3}))
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.load(path)


def test_torchrun_two_cpu_processes_on_gloo(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1, name="ddp")
    path = tmp_path / "ddp.yaml"
    fields = {
        k: getattr(cfg, k)
        for k in (
            "name",
            "model",
            "data",
            "backbone_weights",
            "epochs",
            "batch_size",
            "crop_size",
            "num_workers",
            "warmup_steps",
            "output_dir",
        )
    }
    path.write_text(yaml.safe_dump(fields))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "refinenet.train",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / "runs" / "ddp" / "last.pt")
    # 6 images shared by 2 processes: 3 each, so one full batch of 2 per process makes an epoch.
    assert state["epoch"] == 1 and state["step"] == 1
    log = [json.loads(line) for line in (tmp_path / "runs" / "ddp" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1, "only rank 0 writes the log"


def test_block_health_reports_a_silenced_block():
    from refinenet.train import block_health

    torch.manual_seed(0)
    model = build_model(TrainConfig(name="t", model=dict(TINY_MODEL), data={}, backbone_weights=None).model_config())
    x = torch.randn(1, 3, 64, 64)
    assert all(share > 0 for share in block_health(model, x).values())
    # Drive RefineNet-3's fused input negative everywhere, as a diverged training run can: the
    # last adaptation RCU adds -1000 to every cell, the fusion passes it on unchanged.
    with torch.no_grad():
        rcu = model.refine3.adapt[0].rcus[-1]
        rcu.conv1.weight.zero_()
        rcu.conv1.bias.fill_(1.0)
        rcu.conv2.weight.zero_()
        rcu.conv2.weight[:, :, 1, 1] = -1000.0 / 16
        model.refine3.fusion.convs[0].weight.zero_()
        model.refine3.fusion.convs[0].weight[:, :, 1, 1] = torch.eye(16)
        model.refine3.fusion.convs[1].weight.zero_()
    health = block_health(model, x)
    assert health["RefineNet-3"] == 0.0 and health["RefineNet-4"] > 0


FAKE_TEACHER = '''
import torch


class Teacher:
    """A stand-in teacher with the real one's interface: uniform probabilities over 3 classes."""

    def __init__(self, device="cpu"):
        self.calls = 0

    def probs(self, images, flip=False):
        self.calls += 1
        n, _, h, w = images.shape
        return torch.full((n, 3, h, w), 1 / 3)
'''


def _boxed_data(tmp_path):
    import json

    root = tmp_path / "data"
    make_folder(root / "train" / "images", root / "train" / "labels", [str(i) for i in range(4)], size=(48, 40))
    (root / "train" / "boxes.json").write_text(json.dumps({str(i): [[2, 0, 0, 20, 20]] for i in range(4)}))
    return root


def test_distillation_targets_keep_only_the_classes_the_boxes_allow(tmp_path):
    from refinenet.train import Distiller

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "teacher.py").write_text(FAKE_TEACHER)
    distiller = Distiller(tmp_path / "teacher", 0.5, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"))
    allowed = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    allowed[:, 0] = True
    allowed[:, 2, :4, :4] = True  # a class-2 box over the top-left quarter
    allowed[:, :, 6:] = False  # the last two rows are padding
    targets, on_photo = distiller.targets(torch.zeros(1, 3, 8, 8), allowed, (4, 4))
    # Uniform teacher: background and class 2 share the mass inside the box, background alone
    # outside it; class 1 has no box and gets nothing. Pooled 2x2 to the 4 x 4 output.
    assert torch.allclose(targets[0, :, :2, :2], torch.tensor([0.5, 0.0, 0.5]).view(3, 1, 1).expand(3, 2, 2))
    assert torch.allclose(targets[0, :, 2, 2:], torch.tensor([1.0, 0.0, 0.0]).view(3, 1).expand(3, 2))
    assert on_photo[0, :3].all() and not on_photo[0, 3].any()  # output row 3 is padding
    assert targets[0, :, 3].sum() == 0
    # KL is zero when the student already predicts the targets, positive otherwise.
    logits = targets.clamp_min(1e-12).log()
    assert distiller.loss(logits, targets, on_photo).item() == pytest.approx(0.0, abs=1e-5)
    assert distiller.loss(torch.zeros_like(logits), targets, on_photo).item() > 0.1


SPLIT_TEACHER = '''
import torch


class Teacher:
    """A stand-in teacher: class 2 (0.8) on the left half of every image, background (0.8) on the right."""

    def __init__(self, device="cpu"):
        pass

    def probs(self, images, flip=False):
        n, _, h, w = images.shape
        p = torch.full((n, 3, h, w), 0.1)
        p[:, 2, :, : w // 2] = 0.8
        p[:, 0, :, w // 2 :] = 0.8
        return p
'''


def test_distillation_only_where_the_teacher_agrees_with_the_labels(tmp_path):
    from refinenet.train import Distiller

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "teacher.py").write_text(SPLIT_TEACHER)
    allowed = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    allowed[:, 0] = True
    allowed[:, 2, :4, :4] = True  # a class-2 box over the top-left quarter
    # Restricted to the box, the teacher's argmax is class 2 in the top-left quarter and
    # background everywhere else (its class 2 on the bottom-left has no box).
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, :4, :4] = 2  # agrees
    labels[:, :2, 4:] = 255  # unlabelled: output row 0, columns 2-3 are not distilled
    labels[:, 4:6, :2] = 1  # a class the teacher missed: output (2, 0) is not distilled
    labels[:, 6, 6] = 1  # one pixel of four disagrees: output (3, 3) is still distilled
    labels[:, 6:, 2:4] = torch.tensor([[1, 0], [1, 0]])  # half of output (3, 1): not a majority
    x = torch.zeros(1, 3, 8, 8)
    everywhere = Distiller(tmp_path / "teacher", 1.0, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"))
    assert everywhere.targets(x, allowed, (4, 4), labels)[1].all()
    agreeing = Distiller(
        tmp_path / "teacher", 1.0, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), only_where_labels_agree=True
    )
    targets, mask = agreeing.targets(x, allowed, (4, 4), labels)
    expected = torch.ones(4, 4, dtype=torch.bool)
    expected[0, 2:] = False
    expected[2, 0] = False
    expected[3, 1] = False
    assert torch.equal(mask[0], expected)
    # The targets themselves do not change, only where they are used.
    assert torch.equal(targets, everywhere.targets(x, allowed, (4, 4), labels)[0])
    with pytest.raises(ValueError, match="labels"):
        agreeing.targets(x, allowed, (4, 4))


def test_distill_settings_are_checked_by_name(tmp_path):
    with pytest.raises(ValueError, match="only_where_label_agree"):
        tiny_config(tmp_path, 1, distill={"teacher": "t", "only_where_label_agree": True})


def test_a_run_can_start_from_an_earlier_runs_model_folder(tmp_path):
    """init_from: every tensor of the folder, strictly; a folder of a different network is refused."""
    torch.manual_seed(0)
    first = train(tiny_config(tmp_path, 1, name="first"), progress=False)
    started = build_model(tiny_config(tmp_path, 1).model_config())
    zero_init_residual_branches(started)
    from refinenet.folder import load_folder
    from refinenet.train import load_initial_weights

    trained = load_folder(first / "model").state_dict()
    assert any(not torch.equal(v, started.state_dict()[k]) for k, v in trained.items())
    # A fine-tune at learning rate 0 (batch norms frozen) ends exactly where it started.
    second = train(
        tiny_config(
            tmp_path,
            1,
            name="second",
            init_from=str(first / "model"),
            backbone_bn="frozen",
            lr_backbone=0.0,
            lr_decoder=0.0,
            optimizer="sgd",
        ),
        progress=False,
    )
    after = load_folder(second / "model").state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in after.items())
    other = build_model(tiny_config(tmp_path, 1, model=dict(TINY_MODEL, mean=[0.5] * 3, std=[0.5] * 3)).model_config())
    with pytest.raises(ValueError, match="mean, std"):
        load_initial_weights(other, first / "model")
    # The output stride may change: the same weights, run dilated.
    dilated = build_model(tiny_config(tmp_path, 1, model=dict(TINY_MODEL, output_stride=16)).model_config())
    load_initial_weights(dilated, first / "model")
    assert all(torch.equal(v, trained[k]) for k, v in dilated.state_dict().items())


def trained_run_and_another_encoder(tmp_path):
    """A tiny run's model folder, its tensors, and an encoder file (with its tensors) that differs
    from that run's encoder in every floating tensor: where a test's backbone comes from shows."""
    from safetensors.torch import save_file

    from refinenet.folder import load_folder

    torch.manual_seed(0)
    first = train(tiny_config(tmp_path, 1, name="first"), progress=False)
    folder = first / "model"
    encoder = {k: v + 1 if v.is_floating_point() else v for k, v in load_folder(folder).backbone.state_dict().items()}
    save_file({k: v.contiguous() for k, v in encoder.items()}, tmp_path / "encoder.safetensors")
    return folder, load_folder(folder).state_dict(), tmp_path / "encoder.safetensors", encoder


def train_on_from(tmp_path, start, encoder_file, **overrides):
    """A second tiny run, one epoch from the model folder ``start`` on the encoder file: the run
    folder it wrote."""
    config = tiny_config(
        tmp_path, 1, name="second", backbone_weights=str(encoder_file), init_from=str(start), **overrides
    )
    return train(config, progress=False)


def test_a_run_can_start_its_decoder_alone_from_a_model_folder(tmp_path):
    """init_decoder_from: the folder's decoder on the encoder that backbone_weights gives (here a
    file, kept frozen): a trained decoder re-fitted to its encoder's original weights."""
    from refinenet.folder import load_folder
    from refinenet.train import load_initial_weights

    start, trained, encoder_file, encoder = trained_run_and_another_encoder(tmp_path)
    with pytest.raises(ValueError, match="do not combine"):
        tiny_config(tmp_path, 1, init_from=str(start), init_decoder_from=str(start))
    second = train(
        tiny_config(
            tmp_path,
            1,
            name="second",
            backbone_weights=str(encoder_file),
            freeze_backbone=True,
            init_decoder_from=str(start),
            lr_decoder=0.0,
            optimizer="sgd",
        ),
        progress=False,
    )
    after = load_folder(second / "model").state_dict()
    assert after.keys() == trained.keys()
    for k, v in after.items():
        expected = encoder[k.removeprefix("backbone.")] if k.startswith("backbone.") else trained[k]
        assert torch.equal(v, expected), k
    # A decoder of another shape is refused by name.
    wider = build_model(tiny_config(tmp_path, 1, model=dict(TINY_MODEL, num_classes=5)).model_config())
    with pytest.raises(ValueError, match="num_classes"):
        load_initial_weights(wider, start, decoder_only=True)


def test_freeze_backbone_levels_keeps_the_encoder_below_a_level_as_given_over_init_from(tmp_path):
    """freeze_backbone_levels: 2 on MobileNetV2 is blocks 0-6 (the taps of RefineNet-1 and -2 are
    after blocks 3 and 6). Started from a trained folder, those blocks are the encoder file's and
    stay so while the deeper blocks and the decoder learn."""
    from refinenet.folder import load_folder
    from refinenet.train import backbone_keys_through_level

    start, trained, encoder_file, encoder = trained_run_and_another_encoder(tmp_path)
    model = load_folder(start)
    keys = backbone_keys_through_level(model, 2)
    assert {int(k.split(".")[1]) for k in keys} == set(range(7))
    assert all(k in keys for k in model.backbone.state_dict() if int(k.split(".")[1]) <= 6)
    with pytest.raises(ValueError, match="0..3"):
        tiny_config(tmp_path, 1, freeze_backbone_levels=4)
    second = train_on_from(tmp_path, start, encoder_file, freeze_backbone_levels=2, lr_backbone=0.01)
    after = load_folder(second / "model").state_dict()
    for k in keys:
        assert torch.equal(after[f"backbone.{k}"], encoder[k]), k
    deeper = [k for k in encoder if k not in keys and k.endswith("weight")]
    assert deeper and all(not torch.equal(after[f"backbone.{k}"], trained[f"backbone.{k}"]) for k in deeper)
    assert not torch.equal(after["classifier.weight"], trained["classifier.weight"])


def test_init_encoder_mix_starts_a_run_from_a_folder_with_its_lower_encoder_moved_towards_the_file(tmp_path):
    """init_encoder_mix {weight 0.5, through_level 2}: the run starts from init_from's tensors with
    blocks 0-6 moved half-way to the encoder file. The file's floating tensors are the folder's plus
    1, so those blocks start at the folder's plus 0.5 and the deeper ones at the folder's; a frozen
    backbone keeps exactly the start, which the exported folder shows."""
    from refinenet.folder import load_folder

    start, trained, encoder_file, _ = trained_run_and_another_encoder(tmp_path)
    with pytest.raises(ValueError, match="set init_from"):
        tiny_config(tmp_path, 1, init_encoder_mix={"weight": 0.5, "through_level": 2})
    with pytest.raises(ValueError, match="through_level 1..4"):
        tiny_config(tmp_path, 1, init_from=str(start), init_encoder_mix={"weight": 1.5, "through_level": 2})
    second = train_on_from(
        tmp_path, start, encoder_file, init_encoder_mix={"weight": 0.5, "through_level": 2}, freeze_backbone=True
    )
    after = load_folder(second / "model").state_dict()
    moved = 0
    for k, v in after.items():
        if not k.startswith("backbone.") or not v.is_floating_point():
            continue
        block = int(k.split(".")[2])
        expected = trained[k] + 0.5 if block <= 6 else trained[k]
        assert torch.allclose(v, expected, atol=1e-6), k
        moved += block <= 6
    assert moved > 0


def test_a_backbone_rate_of_zero_keeps_the_mixed_encoder_while_the_decoder_learns(tmp_path):
    """lr_backbone 0 with frozen batch norms: the run's backbone stays exactly where init_from and
    init_encoder_mix put it (blocks 0-6 half-way to the file, which is the folder's plus 1), unlike
    freeze_backbone, which would reset it to the file's; the decoder still trains. Without frozen
    batch norms the statistics would move, so that is refused."""
    from refinenet.folder import load_folder

    start, trained, encoder_file, _ = trained_run_and_another_encoder(tmp_path)
    with pytest.raises(ValueError, match="backbone_bn: frozen"):
        tiny_config(tmp_path, 1, lr_backbone=0.0)
    with pytest.raises(ValueError, match="at least 0"):
        tiny_config(tmp_path, 1, lr_backbone=-1e-3)
    second = train_on_from(
        tmp_path,
        start,
        encoder_file,
        init_encoder_mix={"weight": 0.5, "through_level": 2},
        lr_backbone=0.0,
        backbone_bn="frozen",
        optimizer="sgd",
        weight_decay=0.1,
    )
    after = load_folder(second / "model").state_dict()
    for k, v in after.items():
        if k.startswith("backbone.") and v.is_floating_point():
            expected = trained[k] + 0.5 if int(k.split(".")[2]) <= 6 else trained[k]
            assert torch.allclose(v, expected, atol=1e-6), k
    assert not torch.equal(after["classifier.weight"], trained["classifier.weight"])


def test_interpolate_encoder_moves_the_levels_below_part_of_the_way_to_another_encoder(tmp_path):
    from refinenet.train import backbone_keys_through_level, interpolate_encoder

    torch.manual_seed(0)
    model = build_model(tiny_config(tmp_path, 1).model_config())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    other = {k: v + 2 if v.is_floating_point() else v + 5 for k, v in before.items()}
    interpolate_encoder(model, other, 0.25, through_level=1)
    through = set(backbone_keys_through_level(model, 1))
    assert {int(k.split(".")[1]) for k in through} == set(range(4))  # RefineNet-1's tap: block 3
    for k, v in model.backbone.state_dict().items():
        if k in through and v.is_floating_point():
            assert torch.allclose(v, before[k] + 0.5), k  # a quarter of the way: +2 * 0.25
        else:
            assert torch.equal(v, before[k]), k  # deeper blocks, and counters, as they were
    for weight in (0.0, 1.5):
        with pytest.raises(ValueError, match="weight"):
            interpolate_encoder(model, other, weight, through_level=1)
    with pytest.raises(ValueError, match="features.0"):
        interpolate_encoder(model, {k: v for k, v in other.items() if not k.startswith("features.0.")}, 0.5, 1)


def test_interpolate_weights_moves_a_whole_model_part_of_the_way_or_nothing_when_a_key_is_missing(tmp_path):
    from refinenet.train import interpolate_weights

    torch.manual_seed(0)
    model = build_model(tiny_config(tmp_path, 1).model_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = {k: v - 4 if v.is_floating_point() else v + 5 for k, v in before.items()}
    decoder_key = next(k for k in before if not k.startswith("backbone.") and before[k].is_floating_point())
    with pytest.raises(ValueError, match=re.escape(decoder_key)):
        interpolate_weights(model, {k: v for k, v in other.items() if k != decoder_key}, 0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # refused before anything moved
    interpolate_weights(model, other, 0.75)
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, before[k] - 3), k  # three quarters of the way: -4 * 0.75
        else:
            assert torch.equal(v, before[k]), k  # batch-norm counters as they were


def test_a_distilled_run_with_a_file_encoder_and_frozen_batch_norm(tmp_path):
    """The VOC recipe's options together on generated data: the encoder comes from a
    safetensors file (strictly), the teacher from a folder, the backbone's batch-norm statistics
    stay as loaded, and the run exports a model whose config records the encoder."""
    from safetensors.torch import save_file

    from refinenet.backbones import build_backbone

    torch.manual_seed(0)
    encoder = build_backbone("mobilenetv2")
    with torch.no_grad():
        encoder.features[0][1].running_mean.fill_(0.25)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "encoder.safetensors"))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "teacher.py").write_text(FAKE_TEACHER)
    cfg = tiny_config(
        tmp_path,
        epochs=1,
        backbone_weights=str(tmp_path / "encoder.safetensors"),
        backbone_bn="frozen",
        distill={"teacher": str(tmp_path / "teacher"), "weight": 1.0},
        model=dict(TINY_MODEL, backbone_init="a test encoder"),
        data={"kind": "folders", "root": str(_boxed_data(tmp_path)), "train_split": "train", "ignore_index": 255},
    )
    run = train(cfg, progress=False)
    state = load_checkpoint(run / "last.pt")["model"]
    assert torch.equal(state["backbone.features.0.1.running_mean"], torch.full((32,), 0.25))
    assert not torch.equal(state["backbone.features.0.1.weight"], encoder.features[0][1].weight.detach())
    assert json.loads((run / "model" / "config.json").read_text())["backbone_init"] == "a test encoder"


def test_a_frozen_file_encoder_at_output_stride_16_stays_as_loaded_and_ships_whole(tmp_path):
    """The VOC recipe's frozen teacher encoder: after training it is bit-identical to the file
    (batch-norm statistics and scales included), and the exported folder, which records output
    stride 16 and no frozen_backbone, stores it and loads back to the same model."""
    from safetensors.torch import load_file, save_file

    from refinenet.backbones import build_backbone
    from refinenet.folder import load_folder

    torch.manual_seed(0)
    encoder = build_backbone("mobilenetv2")
    file = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(file))
    cfg = tiny_config(
        tmp_path,
        epochs=1,
        backbone_weights=str(file),
        freeze_backbone=True,
        model=dict(TINY_MODEL, output_stride=16),
        data={"kind": "folders", "root": str(_boxed_data(tmp_path)), "train_split": "train", "ignore_index": 255},
    )
    run = train(cfg, progress=False)
    state = load_checkpoint(run / "last.pt")["model"]
    for key, value in encoder.state_dict().items():
        assert torch.equal(state[f"backbone.{key}"], value), key
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["output_stride"] == 16 and "frozen_backbone" not in config
    assert any(k.startswith("backbone.") for k in load_file(str(run / "model" / "model.safetensors")))
    loaded = load_folder(run / "model")
    assert loaded.backbone.feature_info[-1].stride == 16
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key].float(), value.float()), key


def test_an_encoder_file_that_does_not_fit_names_the_keys(tmp_path):
    from safetensors.torch import save_file

    from refinenet.train import load_encoder

    save_file({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, str(tmp_path / "partial.safetensors"))
    model = build_model(TrainConfig(name="t", model=dict(TINY_MODEL), data={}, backbone_weights=None).model_config())
    with pytest.raises(ValueError, match=r"missing \['features\.0\.1\.bias'"):
        load_encoder(model, str(tmp_path / "partial.safetensors"))


def test_a_config_with_a_base_changes_only_what_it_sets(tmp_path):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump({"name": "a", "model": TINY_MODEL, "data": {"kind": "camvid"}, "epochs": 7, "lr_decoder": 0.01})
    )
    (tmp_path / "variant.yaml").write_text(
        yaml.safe_dump({"base": "base.yaml", "name": "b", "model": {"num_classes": 5}})
    )
    cfg = TrainConfig.load(tmp_path / "variant.yaml")
    assert (cfg.name, cfg.epochs, cfg.lr_decoder) == ("b", 7, 0.01)
    assert cfg.model["num_classes"] == 5 and cfg.model["widths"] == TINY_MODEL["widths"]
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump({"base": "loop.yaml", "name": "c"}))
    with pytest.raises(ValueError, match="loop"):
        TrainConfig.load(tmp_path / "loop.yaml")


def test_until_epoch_stops_at_that_epoch_of_the_schedule_and_repeats_nothing(tmp_path):
    cfg = tiny_config(tmp_path, epochs=3, name="partial")
    run = train(cfg, until_epoch=1, progress=False)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and not (run / "model").exists()
    train(cfg, until_epoch=1, progress=False)  # already there: nothing more
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    train(cfg, progress=False)  # the rest of the same schedule
    assert load_checkpoint(run / "last.pt")["epoch"] == 3 and (run / "model" / "config.json").exists()


# --------------------------------------------------------------------------- frozen backbone


def test_freeze_backbone_needs_pretrained_weights_and_stores_only_what_can_be_fetched_again(tmp_path):
    """Torchvision's weights by name: the exported folders store the decoder alone and load the
    backbone from torchvision. An encoder from a file: the folders store every tensor (nothing
    could fetch it again). A random backbone, or a name the backbone has no weights under, is
    refused."""
    for weights in (None, ""):
        with pytest.raises(ValueError, match="freeze_backbone needs backbone_weights"):
            TrainConfig(name="t", model=dict(TINY_MODEL), data={}, backbone_weights=weights, freeze_backbone=True)
    encoder = str(tmp_path / "encoder.safetensors")
    cfg = TrainConfig(name="t", model=dict(TINY_MODEL), data={}, backbone_weights=encoder, freeze_backbone=True)
    assert cfg.model_config().frozen_backbone == ""
    with pytest.raises(ValueError, match="frozen_backbone: 'IMAGENET9K_V9' is not a torchvision weights name"):
        TrainConfig(name="t", model=dict(TINY_MODEL), data={}, backbone_weights="IMAGENET9K_V9", freeze_backbone=True)
    with pytest.raises(ValueError, match="set freeze_backbone: true"):
        TrainConfig(name="t", model=dict(TINY_MODEL, frozen_backbone="IMAGENET1K_V1"), data={}, freeze_backbone=True)
    cfg = TrainConfig(name="t", model=dict(TINY_MODEL), data={}, freeze_backbone=True)
    assert cfg.model_config().frozen_backbone == "IMAGENET1K_V1"
    assert TrainConfig(name="t", model=dict(TINY_MODEL), data={}).model_config().frozen_backbone == ""


def test_a_frozen_backbone_gets_no_optimiser_group():
    from refinenet.train import freeze_backbone

    model = build_model(TrainConfig(name="t", model=dict(TINY_MODEL), data={}, backbone_weights=None).model_config())
    freeze_backbone(model)
    groups = parameter_groups(model, 1e-4, 1e-3)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3
    backbone = {id(p) for p in model.backbone.parameters()}
    assert not any(id(p) in backbone for p in groups[0]["params"])
    assert len(groups[0]["params"]) == sum(1 for n, _ in model.named_parameters() if not n.startswith("backbone."))


@pytest.mark.usefixtures("no_network")
def test_training_with_a_frozen_backbone_keeps_it_as_published_and_exports_the_decoder(tmp_path, torchvision_cache):
    """A few steps on generated data, interrupted and resumed: torchvision's weights (a random
    MobileNetV2 in a temporary torch cache) come out bit-identical, batch-norm statistics
    included, while the decoder learns; every exported folder stores the decoder alone and loads
    with the cached backbone."""
    from safetensors.torch import load_file

    from refinenet.folder import load_folder

    torch.set_num_threads(1)
    data = tmp_path / "data"
    make_folder(data / "train" / "images", data / "train" / "labels", [str(i) for i in range(6)], size=(48, 40))
    make_folder(data / "val" / "images", data / "val" / "labels", ["v0"], size=(48, 40))
    cfg = tiny_config(
        tmp_path,
        epochs=2,
        name="frozen",
        backbone_weights="IMAGENET1K_V1",
        freeze_backbone=True,
        eval_every=1,
        data={"kind": "folders", "root": str(data), "train_split": "train", "val_split": "val", "ignore_index": 255},
    )
    run = train(cfg, max_steps=3, progress=False)  # the first epoch, then stop
    assert not (run / "model").exists() and (run / "model-e1").is_dir()
    start = load_checkpoint(run / "last.pt")
    assert len(start["optimizer"]["param_groups"]) == 1  # the decoder's alone
    train(cfg, progress=False)  # resumes for the second epoch
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 6
    published = {  # torchvision's MobileNetV2 features 0..17: what the backbone keeps
        f"backbone.{k}": v
        for k, v in torchvision_cache.items()
        if k.startswith("features.") and not k.startswith("features.18.")
    }
    assert published.keys() == {k for k in state["model"] if k.startswith("backbone.")}
    for key, value in published.items():
        assert torch.equal(state["model"][key], value), key
    assert not torch.equal(state["model"]["classifier.weight"], start["model"]["classifier.weight"])
    for folder in (run / "model-e1", run / "model-e2", run / "model"):
        assert json.loads((folder / "config.json").read_text())["frozen_backbone"] == "IMAGENET1K_V1"
        stored = load_file(str(folder / "model.safetensors"))
        assert stored and not any(k.startswith("backbone.") for k in stored)
    loaded = load_folder(run / "model")
    for key, value in state["model"].items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_label_loss_on_unlabelled_pixels_counts_the_mass_on_the_classes_the_boxes_allow():
    from refinenet.train import label_loss

    # Four pixels, three classes; logits chosen so the softmax is exactly (1/2, 1/4, 1/4).
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25])).view(1, 3, 1, 1).expand(1, 3, 1, 4).clone()
    labels = torch.tensor([[[0, 255, 255, 255]]])
    allowed = torch.zeros(1, 3, 1, 4, dtype=torch.bool)
    allowed[0, :, 0, 0] = True  # a labelled pixel: its label decides, whatever the boxes allow
    allowed[0, 0, 0, 1] = True  # unlabelled, outside every box: background alone
    allowed[0, :2, 0, 2] = True  # unlabelled, inside a class-1 box: background or class 1
    # pixel 3: unlabelled padding, nothing allowed: left out of the mean
    # -log 1/2 (label), -log 1/2 (background), -log 3/4 (background + class 1), averaged over 3.
    expected = (math.log(2) + math.log(2) + math.log(4 / 3)) / 3
    logits.requires_grad_(True)
    loss = label_loss(logits, labels, allowed, 255)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.equal(logits.grad[0, :, 0, 3], torch.zeros(3))
    # Where every pixel is labelled it is the usual cross-entropy.
    full = torch.randint(0, 3, (2, 5, 6))
    some = torch.randn(2, 3, 5, 6)
    assert label_loss(some, full, torch.ones(2, 3, 5, 6, dtype=torch.bool), 255).item() == pytest.approx(
        F.cross_entropy(some, full).item(), rel=1e-6
    )


def test_weighted_label_loss_is_the_weighted_mean_of_the_pixels_cross_entropy():
    from refinenet.train import label_loss

    # Softmax (1/2, 1/4, 1/4) everywhere; labels 0, 1, unlabelled; the class-1 pixel weighs 3.
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25])).view(1, 3, 1, 1).expand(1, 3, 1, 3).clone()
    labels = torch.tensor([[[0, 1, 255]]])
    weights = torch.tensor([[[1.0, 3.0, 5.0]]])
    # Without boxes the unlabelled pixel is skipped, its weight too: (1 log 2 + 3 log 4) / 4.
    expected = (math.log(2) + 3 * math.log(4)) / 4
    assert label_loss(logits, labels, None, 255, weights).item() == pytest.approx(expected, rel=1e-6)
    # With boxes allowing background there it counts: (log 2 + 3 log 4 + 5 log 2) / 9.
    allowed = torch.zeros(1, 3, 1, 3, dtype=torch.bool)
    allowed[0, 0] = True
    expected = (math.log(2) + 3 * math.log(4) + 5 * math.log(2)) / 9
    assert label_loss(logits, labels, allowed, 255, weights).item() == pytest.approx(expected, rel=1e-6)
    # Unweighted and without boxes it is the usual cross-entropy.
    some, full = torch.randn(2, 3, 5, 6), torch.randint(0, 3, (2, 5, 6))
    full[0, 0] = 255
    for weights in (None, torch.ones(2, 5, 6)):
        assert label_loss(some, full, None, 255, weights).item() == pytest.approx(
            F.cross_entropy(some, full, ignore_index=255).item(), rel=1e-6
        )


def _boxed_config(tmp_path, **options) -> TrainConfig:
    """A tiny one-epoch run on generated photos with human boxes (train and val the same split)."""
    root = _boxed_data(tmp_path)
    data = {"kind": "folders", "root": str(root), "train_split": "train", "val_split": "train", "ignore_index": 255}
    return tiny_config(tmp_path, epochs=1, data=data, **options)


def test_small_box_weights_change_the_training_loss_and_are_checked(tmp_path):
    # Two runs alike in everything (same boxes, crops and partial labels) but the weight of the
    # small boxes' pixels, with every box counted as small: the weighted run's loss differs. The
    # generated labels are class 1 on the right half of each 48 x 40 photo: a class-1 box there.
    losses = []
    for weight in (1.0, 4.0):
        cfg = _boxed_config(tmp_path / str(weight), partial_labels_from_boxes=True, small_box_weight=weight)
        boxes = {str(i): [[1, 24, 0, 48, 40]] for i in range(4)}
        (Path(cfg.data["root"]) / "train" / "boxes.json").write_text(json.dumps(boxes))
        cfg.small_box_pixels = 10**9
        run = train(cfg, progress=False)
        losses.append(json.loads((run / "log.jsonl").read_text().splitlines()[-1])["loss"])
    assert all(math.isfinite(v) and v > 0 for v in losses) and losses[0] != pytest.approx(losses[1], rel=1e-3)
    assert _boxed_config(tmp_path, small_box_weight=2.0).uses_boxes
    with pytest.raises(ValueError, match="positive"):
        tiny_config(tmp_path, epochs=1, small_box_weight=0.0)
    with pytest.raises(ValueError, match="class_mix"):
        tiny_config(tmp_path, epochs=1, small_box_weight=2.0, class_mix=0.5)


def test_a_run_with_partial_labels_from_boxes_reads_the_boxes_and_trains(tmp_path):
    cfg = _boxed_config(tmp_path, partial_labels_from_boxes=True, eval_every=1)
    assert cfg.uses_boxes and cfg.distill is None
    run = train(cfg, progress=False)
    history = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(history["loss"]) and history["loss"] > 0
    # Validation on a split with boxes says where the outside pixels lie, by their labels.
    assert "val_outside" in history
    assert set(history["val_outside_by_label"]) == {"background", "unlabelled", "object"}
    with pytest.raises(ValueError, match="class_mix"):
        tiny_config(tmp_path, epochs=1, partial_labels_from_boxes=True, class_mix=0.5)


def test_pixel_weights_weigh_small_boxes_and_unlabelled_pixels_and_are_checked(tmp_path):
    from refinenet.train import pixel_weights

    cfg = _boxed_config(tmp_path, partial_labels_from_boxes=True)
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 1:3, 1:3] = 1  # a 2 x 2 object in its small box (1, 1)-(3, 3)
    labels[0, 4:, :] = 255  # two unlabelled rows
    boxes = torch.tensor([[[1.0, 1, 1, 3, 3]]])
    assert pixel_weights(cfg, boxes, labels, 255) is None  # both weights 1: the plain mean
    cfg.small_box_weight, cfg.small_box_pixels, cfg.unlabelled_weight = 5.0, 10, 3.0
    expected = torch.ones(1, 6, 6)
    expected[0, 1:3, 1:3] = 5.0
    expected[0, 4:, :] = 3.0
    assert torch.equal(pixel_weights(cfg, boxes, labels, 255), expected)
    with pytest.raises(ValueError, match="positive"):
        _boxed_config(tmp_path, partial_labels_from_boxes=True, unlabelled_weight=0.0)
    with pytest.raises(ValueError, match="partial_labels_from_boxes"):
        _boxed_config(tmp_path, unlabelled_weight=2.0)


CONTENT_TEACHER = '''
from pathlib import Path

import torch


class Teacher:
    """A stand-in teacher whose class 2 probability is the red channel at each pixel, and that
    keeps the size of the last batch it was shown, next to this file."""

    def __init__(self, device="cpu"):
        pass

    def probs(self, images, flip=False):
        Path(__file__).with_name("seen-size.txt").write_text(" ".join(map(str, images.shape[-2:])))
        red = images[:, :1]
        return torch.cat([1 - red, torch.zeros_like(red), red], 1)
'''


@pytest.mark.parametrize(("grid", "seen"), [(1, (8, 10)), (16, (17, 17)), (4, (9, 13))])
def test_distillation_teacher_grid_pads_the_crop_and_answers_for_its_own_pixels(tmp_path, grid, seen):
    """A teacher aligned only on g*k + 1 pixels sees the crop padded to that size at its bottom and
    right, and its answers are cut back so each crop pixel gets the answer for that pixel."""
    from refinenet.train import Distiller

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "teacher.py").write_text(CONTENT_TEACHER)
    red = torch.rand(1, 1, 8, 10)
    crop = torch.cat([red * 2 - 1, torch.zeros(1, 2, 8, 10)], 1)  # normalised with mean and std 0.5
    distiller = Distiller(tmp_path / "teacher", 1.0, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), grid=grid)
    targets, _ = distiller.targets(crop, torch.ones(1, 3, 8, 10, dtype=torch.bool), (8, 10))
    assert tuple(map(int, (tmp_path / "teacher" / "seen-size.txt").read_text().split())) == seen
    # bf16 autocast rounds the teacher's input to 8 significant bits.
    assert torch.allclose(targets[:, 2:], red, atol=1e-2)
    with pytest.raises(ValueError, match="teacher_grid"):
        Distiller(tmp_path / "teacher", 1.0, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), grid=0)


RECORDING_TEACHER = '''
from pathlib import Path

import torch


class Teacher:
    """A stand-in teacher that keeps every batch it is shown, next to this file."""

    def __init__(self, device="cpu"):
        self.calls = 0

    def probs(self, images, flip=False):
        self.calls += 1
        torch.save(images.clone(), Path(__file__).with_name(f"seen-{self.calls}.pt"))
        n, _, h, w = images.shape
        return torch.full((n, 3, h, w), 1 / 3)
'''


def test_cut_mix_shows_the_teacher_the_mixed_crops_and_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    data = {"kind": "folders", "root": str(_boxed_data(tmp_path)), "train_split": "train", "ignore_index": 255}

    def run(name, steps=None, resume=False, **options):
        teacher = tmp_path / f"teacher-{name}"
        teacher.mkdir(exist_ok=True)
        (teacher / "teacher.py").write_text(RECORDING_TEACHER)
        cfg = tiny_config(
            tmp_path, 2, name, data=data, partial_labels_from_boxes=True, distill={"teacher": str(teacher)}, **options
        )
        folder = train(cfg, max_steps=steps, resume=resume, progress=False)
        # The first epoch's two batches (a run stopped after one step saw one).
        return folder, [
            torch.load(teacher / f"seen-{k}.pt") for k in range(1, 3) if (teacher / f"seen-{k}.pt").exists()
        ]

    _, plain = run("plain")
    mixed_run, mixed = run("mixed", cut_mix=1.0)
    # The same crops, but every crop the teacher saw holds a rectangle of the other crop of its
    # batch of two, and nothing else: the teacher labels the mixed image itself.
    for seen, crops in zip(mixed, plain, strict=True):
        assert not torch.equal(seen, crops)
        for i in range(2):
            own, other = (seen[i] == crops[i]).all(0), (seen[i] == crops[1 - i]).all(0)
            assert (own | other).all() and (other & ~own).any()
    # Interrupted after the first step, then continued: the same rectangles, the same weights.
    run("resumed", steps=1, cut_mix=1.0)
    resumed_run, _ = run("resumed", resume=True, cut_mix=1.0)
    a, b = load_checkpoint(mixed_run / "last.pt"), load_checkpoint(resumed_run / "last.pt")
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    with pytest.raises(ValueError, match="choose one"):
        tiny_config(tmp_path, epochs=1, class_mix=0.5, cut_mix=0.5)
    with pytest.raises(ValueError, match="0 to 1"):
        tiny_config(tmp_path, epochs=1, cut_mix=1.5)
