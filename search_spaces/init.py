"""Deterministic weight (re-)initialisation from an explicit `torch.Generator`.

Search repeats score the same architecture under fresh random weights, so every repeat must
really draw new weights, reproducibly. The reference meant to do this, but its init call
never matched any module (`kaiming_normal` vs `kaiming_norm_*`), so its networks kept
PyTorch's default init and its "re-initialised" repeats reused the same weights. This module
fixes that defect.

Every value is drawn on the CPU from `generator` in float32, in `model.modules()` order, then
copied to the parameter's device and dtype: CPU and GPU models get identical weights.
"""
from __future__ import annotations

import math

import torch
from torch import nn

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)
SUPPORTED = "Conv1d/2d/3d, Linear, BatchNorm, GroupNorm, LayerNorm"


def _normal_(param: torch.Tensor, std: float, generator: torch.Generator) -> None:
    values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
    param.copy_(values)


def reinitialize(model: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every parameter of `model` in place from `generator` (a CPU generator).

    - Conv: kaiming normal, fan_in, ReLU gain: std = sqrt(2 / fan_in),
      fan_in = in_channels / groups * prod(kernel); bias 0.
    - Linear: normal(0, 1 / sqrt(fan_in)) (LeCun: logits of order 1); bias 0.
    - Norm layers: weight 1, bias 0; BatchNorm running statistics reset.

    Raises ValueError for a generator not on the CPU and for a module holding its own
    parameters of an unsupported type (so no weight silently keeps the default init).
    """
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"reinitialize: expected a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(
            f"reinitialize: generator must be on the CPU (got {generator.device}); weights are drawn "
            "on the CPU and copied so every device gets the same values"
        )
    with torch.no_grad():
        for module in model.modules():
            own = list(module.parameters(recurse=False))
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
                _normal_(module.weight, math.sqrt(2.0 / fan_in), generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Linear):
                _normal_(module.weight, 1.0 / math.sqrt(module.in_features), generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, NORM_TYPES):
                if getattr(module, "weight", None) is not None:
                    module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                    module.reset_running_stats()
            elif own:
                raise ValueError(
                    f"reinitialize: module {type(module).__name__} has parameters "
                    f"{[n for n, _ in module.named_parameters(recurse=False)]} but no init rule; "
                    f"supported: {SUPPORTED}"
                )
