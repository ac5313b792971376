"""Loss balance: how large each weighted term is, and how hard it pulls on the student, against the cross entropy.

A distillation weight copied from a paper is tuned for that paper's reduction, map size and class count; under
another reading the same weight can make a term hundreds of times the task loss (and the student then learns
little else) or a ten-thousandth of it (and the method silently does nothing). Neither shows in the final mIoU.
The trainer measures every term at the first step and every ``train.balance_every`` steps, prints the table at the
start, writes the figures to ``metrics.csv`` and warns when a term leaves the range below.
"""

from __future__ import annotations

import math

import torch

# A term outside [WARN_BELOW, WARN_ABOVE] x the cross entropy (in value or in gradient norm) is reported.
WARN_ABOVE = 20.0
WARN_BELOW = 1e-3


def measure_balance(terms: dict[str, torch.Tensor], reference: torch.Tensor, params: list[torch.Tensor],
                    task_weight: float) -> dict[str, dict[str, float]]:
    """Value and student-gradient norm of each weighted term, and both relative to the unweighted ``reference``.

    The first row, ``task``, is the cross entropy times ``task_weight``; its figures follow from the reference's
    without another backward pass.

    Args:
        terms: name -> weighted distillation term, attached to the graph (kept for the real backward).
        reference: the student's own cross entropy, unweighted.
        params: the student's trainable parameters.
        task_weight: the weight of the cross entropy in the training loss.
    """
    def grad_norm(value: torch.Tensor) -> float:
        if not value.requires_grad:
            return 0.0
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None))

    ref_value = float(reference.detach())
    ref_grad = grad_norm(reference)
    balance = {"task": {"value": task_weight * ref_value, "grad": abs(task_weight) * ref_grad,
                        "value_ratio": task_weight if ref_value else math.nan,
                        "grad_ratio": abs(task_weight) if ref_grad else math.nan}}
    for name, value in terms.items():
        term_value, term_grad = float(value.detach()), grad_norm(value)
        balance[name] = {"value": term_value, "grad": term_grad,
                         "value_ratio": term_value / ref_value if ref_value else math.nan,
                         "grad_ratio": term_grad / ref_grad if ref_grad else math.nan}
    return balance


def balance_columns(balance: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flat ``metrics.csv`` columns: ``bal_<term>`` (value / CE) and ``gradbal_<term>`` (gradient norm / CE's)."""
    columns = {}
    for name, figures in balance.items():
        columns[f"bal_{name}"] = figures["value_ratio"]
        columns[f"gradbal_{name}"] = figures["grad_ratio"]
    return columns


def balance_warnings(balance: dict[str, dict[str, float]]) -> list[str]:
    """One line per term whose value or gradient is outside the range the module docstring gives.

    A term that is exactly zero in value and gradient is switched off on purpose (``distill.task_weight: 0`` when
    ACE replaces the cross entropy, a weight of 0 in an ablation) and is not warned about.
    """
    lines = []
    for name, figures in balance.items():
        if figures["value"] == 0.0 and figures["grad"] == 0.0:
            continue
        for what in ("value", "grad"):
            ratio = figures[f"{what}_ratio"]
            if not math.isfinite(ratio):
                continue
            if ratio > WARN_ABOVE or ratio < WARN_BELOW:
                side = "more than" if ratio > WARN_ABOVE else "less than"
                bound = f"{WARN_ABOVE:g}x" if ratio > WARN_ABOVE else f"1/{1 / WARN_BELOW:g}"
                lines.append(f"loss balance: term {name!r} {'gradient' if what == 'grad' else 'value'} is "
                             f"{ratio:.3g}x the cross entropy's ({side} {bound}); check its weight")
    return lines


def format_balance_table(balance: dict[str, dict[str, float]], iteration: int) -> str:
    """A fixed-width table: term, weighted value, value / CE, gradient norm, gradient / CE's."""
    lines = [f"loss balance at iteration {iteration} (weighted terms; ratios against the unweighted cross entropy)",
             f"  {'term':<16} {'value':>10} {'/ CE':>9} {'grad norm':>10} {'/ CE':>9}"]
    for name, figures in balance.items():
        lines.append(f"  {name:<16} {figures['value']:>10.4g} {figures['value_ratio']:>9.3g} "
                     f"{figures['grad']:>10.4g} {figures['grad_ratio']:>9.3g}")
    return "\n".join(lines)
