"""External pretrained checkpoints: containers, safety, strict shape checks, MAE -> timm ViT mapping."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import pipeline.models  # noqa: F401  (registers the CIFAR zoo in timm)
from pipeline.engine.checkpoint import CheckpointError
from pipeline.models.pretrained import LoadReport, detect_kind, load_pretrained, read_checkpoint

# a tiny ViT with the MAE / timm layout: 32x32 input, 8x8 patches -> 4x4 grid + cls token
IMG, PATCH, DIM, DEPTH, HEADS, DEC_DIM = 32, 8, 48, 2, 3, 32


class NotATensor:
    """Stands for any pickled Python object (argparse.Namespace, optimizer, ...)."""

    def __init__(self) -> None:
        self.lr = 0.1


def _block(prefix: str, dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One transformer block with the key names of MAE's (timm-based) ``Block``."""
    shapes = {
        "norm1.weight": (dim,), "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
        "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
        "norm2.weight": (dim,), "norm2.bias": (dim,),
        "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
        "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,),
    }
    return {f"{prefix}.{k}": torch.randn(s, generator=gen) for k, s in shapes.items()}


def fake_mae(img: int = IMG, dim: int = DIM, decoder: bool = True) -> dict[str, torch.Tensor]:
    """Encoder (+ optional decoder) weights laid out exactly like ``mae_pretrain_vit_*.pth``'s ``model``."""
    gen = torch.Generator().manual_seed(0)
    tokens = (img // PATCH) ** 2 + 1
    state = {
        "cls_token": torch.randn(1, 1, dim, generator=gen),
        "pos_embed": torch.randn(1, tokens, dim, generator=gen),
        "patch_embed.proj.weight": torch.randn(dim, 3, PATCH, PATCH, generator=gen),
        "patch_embed.proj.bias": torch.randn(dim, generator=gen),
    }
    for i in range(DEPTH):
        state.update(_block(f"blocks.{i}", dim, gen))
    state["norm.weight"] = torch.randn(dim, generator=gen)
    state["norm.bias"] = torch.randn(dim, generator=gen)
    if decoder:
        state["mask_token"] = torch.randn(1, 1, DEC_DIM, generator=gen)
        state["decoder_embed.weight"] = torch.randn(DEC_DIM, dim, generator=gen)
        state["decoder_embed.bias"] = torch.randn(DEC_DIM, generator=gen)
        state["decoder_pos_embed"] = torch.randn(1, tokens, DEC_DIM, generator=gen)
        state.update(_block("decoder_blocks.0", DEC_DIM, gen))
        state["decoder_norm.weight"] = torch.randn(DEC_DIM, generator=gen)
        state["decoder_norm.bias"] = torch.randn(DEC_DIM, generator=gen)
        state["decoder_pred.weight"] = torch.randn(PATCH * PATCH * 3, DEC_DIM, generator=gen)
        state["decoder_pred.bias"] = torch.randn(PATCH * PATCH * 3, generator=gen)
    return state


def finetune_vit(img: int = IMG, dim: int = DIM) -> VisionTransformer:
    """timm's ViT as the MAE fine-tuning recipe builds it: average pooling + fc_norm, new head."""
    return VisionTransformer(img_size=img, patch_size=PATCH, embed_dim=dim, depth=DEPTH, num_heads=HEADS,
                             global_pool="avg", fc_norm=True, num_classes=10)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------- MAE


@pytest.mark.parametrize("decoder", [True, False], ids=["pretrain-with-decoder", "encoder-only"])
def test_mae_checkpoint_maps_onto_timm_vit(tmp_path: Path, decoder: bool) -> None:
    ckpt = fake_mae(decoder=decoder)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": ckpt}, path)
    model = finetune_vit()
    before = snapshot(model)

    assert detect_kind(path) == "mae"
    report = load_pretrained(model, path)
    after = model.state_dict()

    assert report.kind == "mae"
    encoder = [k for k in ckpt if not (k.startswith("decoder_") or k in ("mask_token", "norm.weight", "norm.bias"))]
    for key in encoder:  # every encoder weight is the checkpoint's, under the same timm name
        assert torch.equal(after[key], ckpt[key]), key
    assert set(after) == set(encoder) | {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    # head re-initialized as in MAE fine-tuning: tiny trunc-normal weights, zero bias
    assert 0 < after["head.weight"].abs().max() < 1e-3
    assert after["head.weight"].std() < 1e-4
    assert torch.equal(after["head.bias"], torch.zeros(10))
    # fc_norm stays freshly initialized
    assert torch.equal(after["fc_norm.weight"], before["fc_norm.weight"])
    assert torch.equal(after["fc_norm.bias"], before["fc_norm.bias"])
    # decoder, mask token and the final norm were dropped and reported
    dropped = {k for k in ckpt if k.startswith("decoder_") or k == "mask_token"} | {"norm.weight", "norm.bias"}
    assert set(report.unexpected) == dropped
    assert report.missing == ["fc_norm.weight", "fc_norm.bias"]
    assert report.reset == ["head.weight", "head.bias"]
    assert report.resized == []
    assert model(torch.randn(2, 3, IMG, IMG)).shape == (2, 10)


def test_mae_pos_embed_resampled_to_larger_grid(tmp_path: Path) -> None:
    ckpt = fake_mae(img=IMG)
    path = tmp_path / "mae.pth"
    torch.save({"model": ckpt}, path)
    model = finetune_vit(img=48)  # 6x6 grid instead of 4x4
    report = load_pretrained(model, path, kind="mae")
    expected = resample_abs_pos_embed(ckpt["pos_embed"], new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)
    assert report.resized == ["pos_embed"]
    assert model.pos_embed.shape == (1, 37, DIM)
    assert torch.allclose(model.pos_embed.detach(), expected)
    assert torch.equal(model.pos_embed.detach()[:, 0], ckpt["pos_embed"][:, 0])  # cls position untouched
    assert torch.equal(model.blocks[1].mlp.fc2.weight.detach(), ckpt["blocks.1.mlp.fc2.weight"])


def test_mae_into_wrong_width_names_key_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "mae.pth"
    torch.save({"model": fake_mae(dim=DIM)}, path)
    with pytest.raises(CheckpointError, match=re.escape("shape mismatch at 'cls_token': checkpoint (1, 1, 48), "
                                                        "model (1, 1, 96)")):
        load_pretrained(finetune_vit(dim=96), path)


# -------------------------------------------------------------------------------------------- timm


def _resnet8(num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("cifar_resnet8", num_classes=num_classes)


@pytest.mark.parametrize("container", ["state_dict", "state_dict_ema", "model", None])
@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "module-prefix"])
def test_timm_containers_round_trip(tmp_path: Path, container: str | None, ddp: bool) -> None:
    src = _resnet8(seed=1)
    state = {("module." if ddp else "") + k: v for k, v in src.state_dict().items()}
    payload = {container: state, "epoch": 7} if container else state
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)

    assert set(read_checkpoint(path, prefer_ema=container == "state_dict_ema")) == set(src.state_dict())
    dst = _resnet8(seed=2)
    report = load_pretrained(dst, path, prefer_ema=container == "state_dict_ema")
    assert report == LoadReport(kind="timm")
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_ema_taken_only_when_asked(tmp_path: Path) -> None:
    raw, ema = _resnet8(seed=1).state_dict(), _resnet8(seed=3).state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": raw, "state_dict_ema": ema}, path)
    key = "stem.conv.weight"
    assert torch.equal(read_checkpoint(path)[key], raw[key])
    assert torch.equal(read_checkpoint(path, prefer_ema=True)[key], ema[key])
    model = _resnet8()
    load_pretrained(model, path, prefer_ema=True)
    assert torch.equal(model.state_dict()[key], ema[key])


def test_safetensors_round_trip(tmp_path: Path) -> None:
    src = _resnet8(seed=1)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = _resnet8(seed=2)
    assert load_pretrained(dst, path).kind == "timm"
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_other_num_classes_keeps_fresh_head(tmp_path: Path) -> None:
    src = _resnet8(num_classes=100, seed=1)
    path = tmp_path / "c100.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    dst = _resnet8(num_classes=10, seed=2)
    fresh = snapshot(dst)
    report = load_pretrained(dst, path)  # reset_head=False: the head differs only in num_classes
    assert report.reset == ["fc.weight", "fc.bias"]
    assert torch.equal(dst.fc.weight.detach(), fresh["fc.weight"])
    assert torch.equal(dst.stem.conv.weight.detach(), src.stem.conv.weight.detach())


def test_reset_head_skips_matching_head(tmp_path: Path) -> None:
    src = _resnet8(seed=1)
    path = tmp_path / "c10.pth"
    torch.save(src.state_dict(), path)
    dst = _resnet8(seed=2)
    fresh = snapshot(dst)
    report = load_pretrained(dst, path, reset_head=True)
    assert report.reset == ["fc.weight", "fc.bias"]
    assert torch.equal(dst.fc.weight.detach(), fresh["fc.weight"])
    assert torch.equal(dst.fc.bias.detach(), fresh["fc.bias"])
    assert not torch.equal(dst.fc.weight.detach(), src.fc.weight.detach())
    assert torch.equal(dst.stem.conv.weight.detach(), src.stem.conv.weight.detach())


def test_shape_mismatch_names_first_key_and_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "r8.pth"
    torch.save({"state_dict": _resnet8().state_dict()}, path)
    wide = timm.create_model("cifar_resnet8x4", num_classes=10)
    key = next(iter(wide.state_dict()))
    ours, theirs = tuple(wide.state_dict()[key].shape), tuple(_resnet8().state_dict()[key].shape)
    assert ours != theirs
    with pytest.raises(CheckpointError, match=re.escape(f"shape mismatch at {key!r}: checkpoint {theirs}, model {ours}")):
        load_pretrained(wide, path)
    with pytest.raises(CheckpointError, match="missing key"):
        load_pretrained(timm.create_model("cifar_resnet20", num_classes=10), path)


def test_non_head_mismatch_is_not_forgiven_with_class_mismatch(tmp_path: Path) -> None:
    state = _resnet8(num_classes=100).state_dict()
    state["stem.conv.weight"] = torch.zeros(16, 3, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=re.escape("'stem.conv.weight': checkpoint (16, 3, 5, 5), model (16, 3, 3, 3)")):
        load_pretrained(_resnet8(num_classes=10), path, reset_head=False)


# ------------------------------------------------------------------------------------------ safety


def test_pickle_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": _resnet8().state_dict(), "args": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="non-tensor objects.*refused for safety") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_pretrained(_resnet8(), path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "vit.pth"
    with pytest.raises(CheckpointError, match=re.escape(f"{path} not found")):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(_resnet8(), path)


def test_unknown_suffix_and_bad_kind(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match="kind"):
        load_pretrained(_resnet8(), path, kind="dino")  # type: ignore[arg-type]
