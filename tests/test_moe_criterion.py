"""moe_label_smoothed_cross_entropy: CE + weighted aux losses, their scale, the logged metrics."""

from __future__ import annotations

import pytest
import torch

from moe_mt.criterions.moe_criterion import aux_coefficients, moe_statistics
from tests.test_switch import EVERY_LAYER, batch, build


@pytest.mark.parametrize(
    "balance_weight, z_loss, z_loss_weight, expected",
    [
        (0.01, False, 0.001, {"balance": 0.01}),  # defaults: z-loss logged, not optimised
        (0.01, True, 0.001, {"balance": 0.01, "z": 0.001}),
        (0.0, True, 0.5, {"balance": 0.0, "z": 0.5}),
    ],
)
def test_aux_coefficients(balance_weight, z_loss, z_loss_weight, expected):
    assert aux_coefficients(balance_weight, z_loss, z_loss_weight) == expected


def _label_smoothed_ce(model, net_output, sample, epsilon: float, pad: int):
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    lprobs, target = lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1)
    return label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index=pad)[0]


def test_total_is_ce_plus_weighted_aux_times_sample_size(prepped_demo):
    task, model, criterion = build(
        prepped_demo, EVERY_LAYER, "model.encoder_layers=2", "model.decoder_layers=2",
        "model.moe.z_loss=true", "model.moe.balance_weight=0.02", "model.dropout=0",
    )  # fmt: skip
    sample = batch(task)
    model.train()  # dropout 0 and no jitter: both forward passes route the same way
    loss, sample_size, log = criterion(model, sample)
    assert sample_size == sample["ntokens"]

    net_output = model(**sample["net_input"])
    outputs = net_output[1]["moe"]
    assert len(outputs) == 4  # every layer of 2+2
    balance = torch.stack([o.output.aux_losses["balance"] for o in outputs]).mean()
    z = torch.stack([o.output.aux_losses["z"] for o in outputs]).mean()
    ce = _label_smoothed_ce(model, net_output, sample, 0.1, task.target_dictionary.pad())
    torch.testing.assert_close(loss, ce + sample_size * (0.02 * balance + 0.001 * z))
    # After fairseq's division by sample_size: mean CE + weights x aux.
    torch.testing.assert_close(loss / sample_size, ce / sample_size + 0.02 * balance + 0.001 * z)
    assert log["moe_balance"] == pytest.approx(float(balance.detach()) * sample_size, rel=1e-5)
    assert log["moe_z"] == pytest.approx(float(z.detach()) * sample_size, rel=1e-5)

    # The aux terms carry gradient to the routers.
    loss.backward()
    assert all(
        block.router.weight.grad is not None and block.router.weight.grad.abs().sum() > 0
        for _, block in model.moe_layers()
    )


def test_dense_model_gets_plain_label_smoothed_ce(prepped_demo):
    task, model, criterion = build(prepped_demo, arch="moemt_transformer_demo")
    sample = batch(task)
    model.eval()
    loss, _, log = criterion(model, sample)
    ce = _label_smoothed_ce(model, model(**sample["net_input"]), sample, 0.1, 1)
    torch.testing.assert_close(loss, ce)
    assert not any(k.startswith("moe_") for k in log)


def test_logged_metrics_are_token_weighted_means(prepped_demo):
    from fairseq import metrics

    task, model, criterion = build(prepped_demo, EVERY_LAYER, "model.moe.num_experts=4")
    model.eval()
    first = batch(task)
    dataset = task.dataset("valid")
    second = dataset.collater([dataset[i] for i in range(16, 40)])
    logs = [criterion(model, sample)[2] for sample in (first, second)]
    with metrics.aggregate() as agg:
        type(criterion).reduce_metrics(logs)
    values = agg.get_smoothed_values()
    size = sum(log["sample_size"] for log in logs)
    for key in ("moe_balance", "moe_z", "moe_dropped", "moe_active", "moe_entropy",
                "moe_load_max", "moe_load_min"):  # fmt: skip
        assert values[key] == pytest.approx(sum(log[key] for log in logs) / size, abs=1e-3)
    assert values["moe_dropped"] == 0.0  # eval mode: no capacity
    assert 0 < values["moe_load_min"] <= 1.0 <= values["moe_load_max"] <= 4.0
    assert 0 < values["moe_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6


def test_statistics_of_a_known_routing():
    from types import SimpleNamespace

    from moe_mt.moe import dispatch_stats

    # 2 layers of 4 experts: tokens [4, 2, 2, 0] (1 of 9 dropped) and [2, 2, 2, 2] (none).
    stats = [
        dispatch_stats(torch.tensor([4, 2, 2, 0]), torch.tensor(9), torch.tensor(1.0)),
        dispatch_stats(torch.tensor([2, 2, 2, 2]), torch.tensor(8), torch.tensor(0.5)),
    ]
    # A router's own statistic (expert choice's) is the mean over the layers that report it.
    router_stats = [
        {"router_entropy": torch.tensor(1.0)},
        {"tokens_without_expert": torch.tensor(0.25)},
    ]
    outputs = [
        SimpleNamespace(output=SimpleNamespace(stats=s, routing=SimpleNamespace(stats=r)))
        for s, r in zip(stats, router_stats, strict=True)
    ]
    result = {k: round(float(v), 4) for k, v in moe_statistics(outputs).items()}
    assert result == {
        "moe_dropped": round((1 / 9) / 2, 4),
        "moe_active": round((0.75 + 1.0) / 2, 4),
        "moe_entropy": 0.75,
        "moe_load_max": round((2.0 + 1.0) / 2, 4),
        "moe_load_min": 0.5,
        "moe_tokens_without_expert": 0.25,
    }
