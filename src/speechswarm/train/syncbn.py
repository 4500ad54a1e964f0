"""Synchronised BatchNorm for DDP: batch statistics over every rank's batch (train.sync_batchnorm).

    speechswarm train --nproc 2 --config tiny train.sync_batchnorm=true

Without it each rank normalises with its own batch's mean and variance, so N ranks with
batch B do not compute what one process with batch N x B would. On CUDA this is torch's
`nn.SyncBatchNorm`; torch's refuses CPU tensors, so on CPU (gloo) `GlooSyncBatchNorm` does the
same with differentiable all-reduces (two per layer and forward: the sums for the mean, then
the squared deviations, in float64). Parameters and buffers keep their names and objects, so
checkpoints load into a plain model and an optimizer built before the conversion stays valid.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlooSyncBatchNorm(_BatchNorm):
    """BatchNorm over the union of all ranks' batches; inputs (N, C) or (N, C, ...).

    Evaluation mode uses the running statistics and never communicates, so rank 0 can
    evaluate alone.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]  # every axis but channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        xd = x.double()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        first = _AllReduceSum.apply(torch.cat([xd.sum(dims), count]))  # (C + 1,)
        n = first[-1].detach()
        mean = first[:-1] / n  # (C,)
        var = _AllReduceSum.apply(((xd - mean.view(shape)) ** 2).sum(dims)) / n  # biased
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(n))
        y = (xd - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked += 1
        momentum = self.momentum
        if momentum is None:  # cumulative moving average, as _BatchNorm does
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / max(n - 1.0, 1.0)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x; the gradient of each rank's x is the sum over ranks of dL/dy
    (each rank's loss depends on every rank's x through y)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm of `model` by a synchronised one (in place; returns `model`)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _replace(model)
    return model


def _replace(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GlooSyncBatchNorm):
            setattr(module, name, _synced(child))
        else:
            _replace(child)


def _synced(bn: _BatchNorm) -> GlooSyncBatchNorm:
    new = GlooSyncBatchNorm(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
        device=bn.running_mean.device if bn.running_mean is not None else None,
    )  # fmt: skip
    # Same objects, not copies: an optimizer made earlier keeps updating these parameters.
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new
