"""The named optimizers: BERT's Adam by hand, and the whole-encoder baselines that take it."""

import pytest
import torch
import torch.nn.functional as F
from conftest import toy_parts
from torch import nn

from lifelong.benchmarks import build_stream
from lifelong.methods import make_method
from lifelong.methods.optimizers import BERT_ADAM_EPS, BERT_WEIGHT_DECAY, build_optimizer
from lifelong.models.network import Network


def _linear(n_in=16, n_out=3):
    torch.manual_seed(0)
    return Network(nn.Sequential(nn.Flatten()), nn.Linear(n_in, n_out))


@pytest.mark.parametrize("method", ["finetune", "independent", "joint"])
def test_adam_first_step_is_sign_of_the_gradient_plus_decay_on_weights_only(method):
    """Adam's first bias-corrected step is lr * g / (|g| + eps); AdamW first shrinks each weight
    matrix by lr * 0.01 and leaves the biases (one-dimensional) undecayed."""
    stream = build_stream("toy", "domain", toy_parts(n_tasks=1, classes_per_task=3), (1, 4, 4))
    task = next(iter(stream))
    learner = make_method(method, _linear(16, stream.n_units), lr=0.1, optimizer="adam")
    x, y = task.x_train[:5], task.y_train[:5]
    learner.begin_task(task)
    net = learner.net(0) if method == "independent" else learner.model
    w0, b0 = net.head.weight.detach().clone(), net.head.bias.detach().clone()
    loss = F.cross_entropy(net(x), y)
    gw, gb = torch.autograd.grad(loss, [net.head.weight, net.head.bias])
    learner.observe(x, y, torch.zeros(5, dtype=torch.long) if method == "joint" else 0)
    expected_w = w0 * (1 - 0.1 * BERT_WEIGHT_DECAY) - 0.1 * gw / (gw.abs() + BERT_ADAM_EPS)
    expected_b = b0 - 0.1 * gb / (gb.abs() + BERT_ADAM_EPS)
    torch.testing.assert_close(net.head.weight.detach(), expected_w)
    torch.testing.assert_close(net.head.bias.detach(), expected_b)


def test_sgd_is_plain_sgd_and_an_unknown_name_is_refused():
    model = _linear()
    sgd = build_optimizer("sgd", model.parameters(), 0.5)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="optimizer='lbfgs'"):
        build_optimizer("lbfgs", model.parameters(), 0.5)
