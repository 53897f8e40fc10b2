"""Adam, AdamW and SGD as the training loop uses them: torch's own update functions, held
without torch.optim.Optimizer.

torch.optim.Optimizer imports torch._dynamo the first time one is made or stepped (its methods
are wrapped to stay out of compiled graphs): 1.3 to 1.8 s of pure Python, a fifth of a whole
`mnist-cnn train --model fast`, that no thread can hide (it holds the GIL). The update itself is
torch's public functional API (`torch.optim.adam.adam`, `torch.optim.sgd.sgd`: the same fused
kernels, the same numbers), which needs no dynamo outside a compiled graph. What is kept here is
only the bookkeeping: the parameters, the learning rate (set by the loop at every step) and each
parameter's state, with `state_dict`/`load_state_dict` in torch.optim's layout, so checkpoints
read and write as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.adam import adam
from torch.optim.sgd import sgd


class Optimizer:
    """One group of parameters and their state; subclasses say how a step updates them."""

    def __init__(self, params: Iterable[torch.Tensor], **hyper: Any) -> None:
        self.param_groups: list[dict[str, Any]] = [{"params": list(params), **hyper}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: state keyed by the parameter's index, groups listing indices."""
        group = self.param_groups[0]
        index = {id(p): i for i, p in enumerate(group["params"])}
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                                  "params": list(range(len(group["params"])))}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The state of state_dict() (its groups' hyperparameters are this optimizer's own)."""
        params = self.param_groups[0]["params"]
        self.state = {}
        for i, saved in state_dict["state"].items():
            p = params[int(i)]
            # on the parameter's device; floating state in its dtype, except the step count
            self.state[p] = {k: v.to(p.device, p.dtype if k != "step" and v.is_floating_point()
                                     else v.dtype, copy=True) for k, v in saved.items()}

    def step(self) -> None:
        raise NotImplementedError

    def with_grads(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The parameters that have a gradient (a frozen one has none), and their gradients."""
        params, grads = [], []
        for p in self.param_groups[0]["params"]:
            if p.grad is not None:
                params.append(p)
                grads.append(p.grad)
        return params, grads


class Adam(Optimizer):
    """torch.optim.Adam(fused=True) without its first-use import; AdamW decouples the decay."""

    decoupled = False

    def __init__(self, params: Iterable[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self) -> None:
        group, (params, grads) = self.param_groups[0], self.with_grads()
        if not params:
            return
        for p in params:
            if p not in self.state:  # as torch.optim.Adam keeps it: the fused step is float32
                self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                 "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
        state = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adam(params, grads, [s["exp_avg"] for s in state],
             [s["exp_avg_sq"] for s in state], [], [s["step"] for s in state],
             fused=True, decoupled_weight_decay=self.decoupled, amsgrad=False, beta1=beta1,
             beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
             maximize=False)


class AdamW(Adam):
    decoupled = True


class SGD(Optimizer):
    """torch.optim.SGD (momentum, optionally Nesterov) without its first-use import."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, dampening=0.0)

    @torch.no_grad()
    def step(self) -> None:
        group, (params, grads) = self.param_groups[0], self.with_grads()
        if not params:
            return
        buffers: list[torch.Tensor | None] = [self.state.get(p, {}).get("momentum_buffer")
                                              for p in params]
        sgd(params, grads, buffers, weight_decay=group["weight_decay"],
            momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
            nesterov=group["nesterov"], maximize=False)
        if group["momentum"]:  # the function made the buffers of a first step
            for p, buffer in zip(params, buffers):
                if buffer is not None:
                    self.state[p] = {"momentum_buffer": buffer}
