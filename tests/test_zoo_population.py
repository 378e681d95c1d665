"""The batched engine: stacked models, their optimizers, dropout masks and data order."""

import dataclasses

import pytest
import torch

from sane.zoo import population
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.population import (
    DROPOUT_STREAM,
    StackedNet,
    data_order,
    model_layout,
    per_model_batch,
    stream_seed,
)
from sane.zoo.stacked_optimizer import StackedOptimizer


def assert_close_to_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding relative to the largest value (logits can be large)."""
    actual, expected = actual.detach(), expected.detach()
    torch.testing.assert_close(actual, expected, rtol=1e-4,
                               atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("arch", [
    ArchConfig(),
    ArchConfig(name="cnn_l", in_channels=3, input_size=32, activation="gelu"),
    ArchConfig(name="mlp", activation="relu"),
    ArchConfig(name="cnn1d", input_size=40),
])
def test_stacked_net_computes_each_models_own_function(arch):
    archs = [dataclasses.replace(arch, dropout=p, init=init)
             for p, init in [(0.0, "kaiming_uniform"), (0.5, "kaiming_normal"), (0.0, "normal")]]
    models = [build_model(a, seed) for a, seed in zip(archs, (1, 2, 3))]
    for m in models:
        m.eval()
    net = StackedNet(models)
    side = (arch.input_size,) * (1 if arch.name == "cnn1d" else 2)
    x = torch.randn(12, arch.in_channels, *side, generator=torch.Generator().manual_seed(0))
    xm = model_layout(x)
    same = net.forward(per_model_batch(xm, torch.arange(12).expand(3, -1)))
    assert_close_to_rounding(same, torch.stack([m(x) for m in models]))
    # Every model its own images, as in training.
    index = torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(s))[:5]
                         for s in range(3)])
    own = net.forward(per_model_batch(xm, index))
    assert_close_to_rounding(own, torch.stack([m(x[i]) for m, i in zip(models, index)]))
    for state, model in zip(net.state_dicts(), models):
        assert list(state) == list(model.state_dict())
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_fast_tanh_matches_torch_tanh_and_its_gradient():
    x = torch.cat([torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 4,
                   torch.logspace(-8, 2, 200), -torch.logspace(-8, 2, 200), torch.zeros(1)])
    x.requires_grad_(True)
    ours = population._Tanh.apply(x)
    theirs = torch.tanh(x)
    torch.testing.assert_close(ours, theirs, rtol=3e-7, atol=0)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    (grad_ours,) = torch.autograd.grad(ours, x, g)
    (grad_theirs,) = torch.autograd.grad(theirs, x, g)
    # 1 - y² cancels where |y| is near 1: an ulp of y there is an absolute error of 2 ulp(1).
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-6,
                               atol=4 * 2**-23 * float(g.abs().max()))


def test_stacked_optimizer_matches_torch_adam_and_sgd():
    models = [build_model(ArchConfig(init="kaiming_uniform"), s) for s in range(4)]
    kinds, lrs, wds = ["adam", "adam", "sgd", "sgd"], [1e-3, 3e-4, 1e-2, 1e-3], [0, 1e-3, 1e-4, 0]
    net = StackedNet(models)
    ours = StackedOptimizer(net, kinds, lrs, wds, [0.0, 0.0, 0.9, 0.5])
    theirs = [
        torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd) if kind == "adam"
        else torch.optim.SGD(m.parameters(), lr=lr, momentum=mom, weight_decay=wd)
        for m, kind, lr, wd, mom in zip(models, kinds, lrs, wds, [0, 0, 0.9, 0.5])
    ]
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        grads = [torch.randn(p.shape, generator=generator) for p in net.params]
        ours.step(grads)
        for k, (model, optimizer) in enumerate(zip(models, theirs)):
            for i, p in enumerate(model.parameters()):
                r = net.rows[i]
                p.grad = grads[i][k * r:(k + 1) * r].reshape(p.shape).clone()
            optimizer.step()
    for state, model in zip(net.state_dicts(), models):
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-7)
    # The saved state restores the optimizer exactly.
    again = StackedOptimizer(net, kinds, lrs, wds, [0.0, 0.0, 0.9, 0.5])
    again.load_state_dicts(ours.state_dicts())
    assert again.step_count == 6
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(again.state, ours.state) if a[0].numel())


def test_dropout_masks_belong_to_each_model_alone():
    arch = ArchConfig(dropout=0.5, init="kaiming_uniform")
    x = model_layout(torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)))

    def outputs(companions):
        models = [build_model(arch, 7), *(build_model(arch, s) for s in companions)]
        models.insert(1, build_model(dataclasses.replace(arch, dropout=0.0), 9))
        net = StackedNet(models)
        index = torch.arange(8).expand(len(models), 8)
        generators = [torch.Generator().manual_seed(stream_seed(s, DROPOUT_STREAM, 1)) for s in
                      [7, 9, *companions]]
        generators[1] = None
        train = net.forward(per_model_batch(x, index), dropout=generators)
        plain = net.forward(per_model_batch(x, index))
        return train, plain

    alone, alone_plain = outputs([])
    crowd, _ = outputs([1, 2, 3])
    torch.testing.assert_close(alone[0], crowd[0], rtol=1e-5, atol=1e-5)  # same mask
    assert not torch.allclose(alone[0], alone_plain[0])  # dropout did something
    torch.testing.assert_close(alone[1], alone_plain[1])  # p = 0: no dropout
    assert not torch.allclose(crowd[2], crowd[3])


def test_data_order_is_a_seeded_permutation_per_epoch():
    a, b = data_order(1, 1, 50), data_order(1, 2, 50)
    assert sorted(a.tolist()) == list(range(50))
    assert torch.equal(a, data_order(1, 1, 50)) and not torch.equal(a, b)
    assert not torch.equal(a, data_order(2, 1, 50))
