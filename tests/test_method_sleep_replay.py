import math

import numpy as np
import pytest
import torch
from conftest import toy_parts

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import make_method
from lifelong.methods.sleep_replay import (
    SpikingNetwork,
    hebbian_update,
    normalisation_factors,
    plasticity_factor,
    sleep_input_spikes,
)
from lifelong.models import make_model
from lifelong.params import ParamError

torch.set_num_threads(1)

#: sleep settings under which the toy class stream's old tasks come back (a small search on seeds
#: 0-2, checked on seeds 3-12; the code's MNIST settings are tuned for 1200-unit layers)
TOY_SLEEP = dict(inc=0.13, dec=0.019, alpha_scale=11.3, beta=(1.4, 6.0), input_rate=97.0,
                 steps=2000, steps_per_task=0)


def test_hebbian_update_on_a_2_2_2_network_with_hand_set_spikes():
    inc, dec = 0.03, 0.004
    w1, w2 = np.zeros((2, 2)), np.zeros((2, 2))  # sigma(0) = 1: the updates are inc and dec exactly
    x, h, o = np.array([True, False]), np.array([True, True]), np.array([False, True])
    hebbian_update(w1, x, h, inc, dec)
    hebbian_update(w2, h, o, inc, dec)
    # hidden units both spiked: +inc from the input that spiked, -dec from the one that did not
    np.testing.assert_array_equal(w1, [[inc, -dec], [inc, -dec]])
    # only output 1 spiked, both of its inputs with it; output 0's row is untouched
    np.testing.assert_array_equal(w2, [[0.0, 0.0], [inc, inc]])
    # the code's weight-dependent factor 2 (1 - 1 / (1 + exp(-w / 0.001))), by hand
    w = np.array([[-0.002, 0.001], [0.5, -0.5]])
    hebbian_update(w, np.array([True, False]), np.array([True, False]), inc, dec)
    expected_00 = -0.002 + inc * 2 * (1 - 1 / (1 + math.exp(2.0)))
    expected_01 = 0.001 - dec * 2 * (1 - 1 / (1 + math.exp(-1.0)))
    assert w[0, 0] == pytest.approx(expected_00, abs=1e-15)
    assert w[0, 1] == pytest.approx(expected_01, abs=1e-15)
    np.testing.assert_array_equal(w[1], [0.5, -0.5])
    assert plasticity_factor(np.array([0.0]))[0] == 1.0
    assert plasticity_factor(np.array([-1.0]))[0] == 2.0 and plasticity_factor(np.array([1.0]))[0] == 0.0


def test_threshold_scaling_follows_the_codes_normalisation():
    # s = max(weight max, activation max) = 3, 2, 4; f1 = 1/3, p = 3; f2 = 3/2, p = 2/3; f3 = (2/3)/4
    factors = normalisation_factors([0.5, 2.0, 0.1], [3.0, 1.5, 4.0])
    np.testing.assert_allclose(factors, [1 / 3, 3 / 2, 1 / 6])
    with pytest.raises(ValueError, match="cannot be normalised"):
        normalisation_factors([-1.0], [0.0])


def test_alpha_and_thresholds_of_the_converted_mlp_by_hand():
    model = make_model("mlp", (1, 4, 4), 6, seed=1, hidden=(5, 4), dropout=0.5)
    method = make_method("sleep-replay", model, alpha_scale=7.0, beta=(2.0, 3.0, 4.0), steps=0)
    x = torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    method.generator = torch.Generator().manual_seed(0)
    method.input_sum, method.input_count = x.reshape(30, -1).double().sum(0), 30
    model.eval()
    with torch.no_grad():  # eval activations by hand; layers after a dropout at the code's scale W / (1 - p)
        l1, l2, head = model.body[1], model.body[4], model.head
        a1 = torch.relu(l1(x.reshape(30, -1)))
        a2 = torch.relu(l2(a1))
        out = head(a2)
        s1 = max(l1.weight.max().item(), a1.max().item())
        s2 = max(2 * l2.weight.max().item(), a2.max().item())
        s3 = max(2 * head.weight.max().item(), max(out.max().item(), 0.0))
    f1 = 1 / s1
    f2 = s1 / s2
    f3 = (s2 / s1) / s3
    method.sleep(x, 0)
    np.testing.assert_allclose(method.last_sleep["sleep_alpha"], [7 * f1, 7 * f2, 7 * f3], rtol=1e-5)
    assert method.thresholds(3) == [2.0, 3.0, 4.0]
    assert method.thresholds(2) == [2.0, 4.0]  # one hidden layer: the first hidden and the output value
    assert method.thresholds(4) == [2.0, 3.0, 3.0, 4.0]


def test_spiking_forward_on_a_tiny_network():
    # 2 inputs -> 2 hidden -> 1 output, no plasticity: integrate, decay, fire at the threshold, reset
    w1 = np.array([[1.0, 0.5], [0.0, -1.0]])
    w2 = np.array([[2.0, 1.0]])
    net = SpikingNetwork([w1, w2], alpha=[0.5, 1.0], thresholds=[0.6, 1.5], decay=0.5, inc=0.0, dec=0.0)
    h, o = net.step(np.array([True, True]))
    # hidden: v = 0.5 * [1.5, -1] = [0.75, -0.5]: unit 0 fires (and resets); output: 1 * 2 = 2 >= 1.5
    np.testing.assert_array_equal(h, [True, False])
    np.testing.assert_array_equal(o, [True])
    np.testing.assert_allclose(net.membranes[0], [0.0, -0.5])
    np.testing.assert_allclose(net.membranes[1], [0.0])
    h, o = net.step(np.array([False, True]))
    # hidden: v = 0.5 * [0, -0.5] + 0.5 * [0.5, -1] = [0.25, -0.75]: silent; output decays to 0
    np.testing.assert_array_equal(h, [False, False])
    np.testing.assert_allclose(net.membranes[0], [0.25, -0.75])
    h, o = net.step(np.array([True, False]))
    # hidden: 0.5 * [0.25, -0.75] + 0.5 * [1, 0] = [0.625, -0.375]: unit 0 fires again
    np.testing.assert_array_equal(h, [True, False])
    np.testing.assert_array_equal(o, [True])
    np.testing.assert_array_equal(w1, [[1.0, 0.5], [0.0, -1.0]])  # no plasticity asked for


def test_sleep_input_is_a_patch_of_the_mean_image_spiking_at_its_rate():
    mean = np.linspace(0.0, 0.3, 16)
    steps, patch = 4000, 2
    g = torch.Generator().manual_seed(0)
    spikes = np.concatenate(list(sleep_input_spikes(mean, (1, 4, 4), steps, patch, 2.0, g)))
    assert spikes.shape == (steps, 16)
    grid = spikes.reshape(steps, 4, 4)
    for frame in grid[:200]:  # every step's spikes fit in one 2 x 2 square
        rows, cols = np.nonzero(frame)
        if len(rows):
            assert rows.max() - rows.min() < patch and cols.max() - cols.min() < patch
    assert not spikes[:, 0].any()  # a zero mean never spikes
    # pixel (r, c) is in the patch with probability (#tops covering r / 3) * (#lefts covering c / 3)
    cover = np.array([1, 2, 2, 1]) / 3
    expected = (cover[:, None] * cover[None, :]).reshape(-1) * np.minimum(1.0, 2.0 * mean)
    np.testing.assert_allclose(spikes.mean(0), expected, atol=0.02)


def test_weights_return_to_the_ann_at_its_own_scale():
    # input (2,) -> 2 hidden -> dropout 0.5 -> 2 outputs; every input spikes at every step
    model = make_model("mlp", (2,), 2, hidden=(2,), dropout=0.5)
    with torch.no_grad():
        model.body[1].weight.copy_(torch.tensor([[0.0, 0.3], [-0.3, 0.0]]))
        model.head.weight.copy_(torch.tensor([[0.4, 0.0], [-0.4, 0.0]]))
    inc, dec = 0.1, 0.05
    method = make_method("sleep-replay", model, inc=inc, dec=dec, beta=(1e-9,), input_rate=1000.0, dt=0.001)
    method.generator = torch.Generator().manual_seed(0)
    method.input_sum, method.input_count = torch.ones(2, dtype=torch.float64), 1
    method.sleep(torch.ones(4, 2), 1)
    # hidden 0 fires (all inputs did): its weight at 0 gains inc, its weight at 0.3 has sigma ~ 0;
    # hidden 1 stays silent. Output 0 fires: from silent hidden 1, at the code's scale 0 / 0.5, -dec,
    # which is -dec * 0.5 back in the ANN; output 1 stays silent.
    torch.testing.assert_close(model.body[1].weight, torch.tensor([[inc, 0.3], [-0.3, 0.0]]))
    torch.testing.assert_close(model.head.weight, torch.tensor([[0.4, -0.5 * dec], [-0.4, 0.0]]))
    # no plasticity: the round trip through the code's scale leaves every weight exactly as it was
    model = make_model("mlp", (1, 4, 4), 6, hidden=(8, 8), dropout=0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = make_method("sleep-replay", model, inc=0.0, dec=0.0, steps=50)
    engine.run(method, build_stream("toy", "class", toy_parts(n_tasks=1), (1, 4, 4)), batch_size=8)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    method.sleep(torch.rand(10, 1, 4, 4), 50)
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())


def _run(name, stream, seed, **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(32,))
    method = make_method(name, model, seed=seed, lr=0.1, **params)
    return engine.run(method, stream, epochs=2, batch_size=8, seed=seed), method


def test_sleep_recovers_old_classes_that_finetune_forgets(toy_class_stream):
    old = {"finetune": [], "sleep-replay": []}
    acc = {"finetune": [], "sleep-replay": []}
    for seed in range(3):
        for name, params in (("finetune", {}), ("sleep-replay", TOY_SLEEP)):
            result, _ = _run(name, toy_class_stream, seed, **params)
            old[name].append(result.accuracy_matrix[-1, :2].mean())
            acc[name].append(result.metrics["acc"])
    # fine-tuning keeps only the newest classes; sleep gives part of the old ones back on every seed
    assert max(old["finetune"]) < 0.1
    assert all(s > f + 0.2 for s, f in zip(old["sleep-replay"], old["finetune"], strict=True))
    assert np.mean(acc["sleep-replay"]) > np.mean(acc["finetune"]) + 0.1


def test_sleep_without_plasticity_is_finetune(toy_class_stream):
    finetune, _ = _run("finetune", toy_class_stream, 0)
    idle, method = _run("sleep-replay", toy_class_stream, 0, inc=0.0, dec=0.0, steps=200,
                       steps_per_task=100)
    np.testing.assert_array_equal(idle.accuracy_matrix, finetune.accuracy_matrix)
    assert idle.method_reports[-1]["sleep_steps"] == 200 + 2 * 100


def test_memory_is_the_running_mean_input(toy_class_stream):
    result, method = _run("sleep-replay", toy_class_stream, 0, **TOY_SLEEP)
    x = torch.cat([task.x_train for task in toy_class_stream]).reshape(-1, 16).double()
    torch.testing.assert_close(method.input_sum / method.input_count, x.mean(0))
    n_params = 16 * 32 + 32 + 32 * 6 + 6
    assert result.method_memory[-1] == {"parameters": n_params, "parameter_bytes": 4 * n_params,
                                        "input_statistics": 16, "input_statistics_bytes": 16 * 8 + 8}


def test_other_networks_and_bad_parameters_are_refused(toy_class_stream):
    conv = make_model("conv", (1, 4, 4), 6)
    with pytest.raises(ValueError, match="needs the 'mlp' model"):
        make_method("sleep-replay", conv).begin_task(toy_class_stream[0])
    mlp = make_model("mlp", (1, 4, 4), 6)
    with pytest.raises(ParamError, match="inc"):
        make_method("sleep-replay", mlp, inc=-0.1)
    with pytest.raises(ParamError, match="beta"):
        make_method("sleep-replay", mlp, beta="1.0,-2.0")
    with pytest.raises(ParamError, match="patch_size"):
        make_method("sleep-replay", mlp, patch_size=0)
    with pytest.raises(ValueError, match="beta needs at least one"):
        make_method("sleep-replay", mlp, beta="").begin_task(toy_class_stream[0])


def test_protocol_recovered_share_and_runs_by_hand():
    from lifelong.reproduce_sleep import SLEEP_PROTOCOL, forgotten, gap_closed, old_accuracy, recovered_share

    finetune = np.array([[0.9, 0.0, 0.0], [0.2, 0.8, 0.0], [0.0, 0.1, 1.0]])
    sleep = np.array([[0.9, 0.0, 0.0], [0.5, 0.7, 0.0], [0.3, 0.4, 0.8]])
    joint = np.array([[0.9, 0.0, 0.0], [0.9, 0.9, 0.0], [0.9, 0.9, 0.9]])
    assert forgotten(finetune) == pytest.approx(((0.9 - 0.0) + (0.8 - 0.1)) / 2)
    assert old_accuracy(sleep) == pytest.approx(0.35)
    # sleep's earlier tasks: 0.35 against finetune's 0.05, of the 0.8 finetune forgot
    assert recovered_share(sleep, finetune) == pytest.approx(0.30 / 0.8)
    # final ACC 0.5 against 0.3667, joint 0.9
    assert gap_closed(sleep, finetune, joint) == pytest.approx((1.5 - 1.1) / (2.7 - 1.1))
    runs = SLEEP_PROTOCOL.runs([0])
    assert sorted((c.benchmark, c.method) for c in runs) == sorted(
        (b, m) for b in ("split-mnist", "split-fashion-mnist") for m in ("finetune", "sleep-replay", "joint"))
    for config in runs:
        full = config.resolved()  # every parameter valid
        assert full["benchmark_params"]["scenario"] == "class"
        assert full["model_params"]["hidden"] == [1200, 1200]
    fashion = next(c for c in runs if c.benchmark == "split-fashion-mnist" and c.method == "sleep-replay")
    assert fashion.resolved()["method_params"]["inc"] == 0.041001
