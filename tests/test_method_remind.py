import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import resumed_after_first_task

from lifelong import engine
from lifelong.benchmarks.stream import mask_logits
from lifelong.methods import METHODS, make_method
from lifelong.methods.product_quantizer import ProductQuantizer, kmeans
from lifelong.methods.remind import Remind, crop_boxes, raw_examples_for_budget, resize_crops
from lifelong.models import make_model
from lifelong.params import ParamError

torch.set_num_threads(1)


def conv_remind(stream, seed=0, **params):
    """The toy 1x4x4 stream on a conv net: G = conv(4 channels) + ReLU + pool -> a 4 x 2 x 2 map."""
    model = make_model("conv", stream.input_shape, stream.n_units, seed=seed, channels=(4,), hidden=16)
    return make_method("remind", model, seed=seed, **{"lr": 0.03, "replay_ratio": 2.0, **params})


# ----------------------------------------------------------------------------- product quantiser
def test_kmeans_finds_the_means_of_two_separated_clusters():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [11.0, 10.0], [10.0, 12.0]])
    for seed in range(5):  # whatever two points the initialisation draws
        centroids = kmeans(x, 2, 10, torch.Generator().manual_seed(seed))
        got = sorted(centroids.tolist())
        assert got[0] == pytest.approx([1 / 3, 1 / 3]) and got[1] == pytest.approx([31 / 3, 32 / 3])


def test_reconstruction_error_falls_with_more_subvectors():
    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(0))
    errors = []
    for m in (1, 2, 4, 8, 16):
        pq = ProductQuantizer().fit(x, m, k=16, generator=torch.Generator().manual_seed(1))
        errors.append(float(((pq.reconstruct(x) - x) ** 2).mean()))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 0.5 and errors[-1] < 0.05  # 16 centroids per value leave little error


def test_a_feature_made_of_centroids_is_reconstructed_exactly():
    x = torch.randn(500, 12, generator=torch.Generator().manual_seed(0))
    pq = ProductQuantizer().fit(x, 3, k=32, generator=torch.Generator().manual_seed(0))
    codes = torch.randint(0, 32, (50, 3), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    features = pq.decode(codes)
    for j in range(3):  # decode puts centroid codes[:, j] of codebook j in slice j, by hand
        assert torch.equal(features[:, 4 * j:4 * (j + 1)], pq.codebooks[j][codes[:, j].long()])
    encoded = pq.encode(features)
    assert encoded.dtype == torch.uint8 and encoded.shape == (50, 3)
    assert torch.equal(encoded, codes)
    assert torch.equal(pq.reconstruct(features), features)  # error exactly 0
    assert pq.nbytes == 3 * 32 * 4 * 4  # m x k x (D / m) float32


def test_fewer_training_vectors_than_centroids_and_determinism():
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    pq = ProductQuantizer().fit(x, 2, k=256, generator=torch.Generator().manual_seed(0))
    assert pq.codebooks.shape == (2, 20, 2)  # one centroid per training vector
    assert torch.equal(pq.reconstruct(x), x)
    again = ProductQuantizer().fit(x, 2, k=8, generator=torch.Generator().manual_seed(5))
    same = ProductQuantizer().fit(x, 2, k=8, generator=torch.Generator().manual_seed(5))
    other = ProductQuantizer().fit(x, 2, k=8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(again.codebooks, same.codebooks)
    assert not torch.equal(again.codebooks, other.codebooks)
    state = again.state_dict()
    loaded = ProductQuantizer()
    loaded.load_state_dict(state)
    assert torch.equal(loaded.encode(x), again.encode(x))


def test_product_quantizer_rejects_bad_arguments():
    x = torch.randn(10, 6)
    with pytest.raises(ValueError, match="m=4 sub-vectors must divide the 6"):
        ProductQuantizer().fit(x, 4)
    with pytest.raises(ValueError, match="k=300"):
        ProductQuantizer().fit(x, 2, k=300)
    with pytest.raises(ValueError, match="not fitted"):
        ProductQuantizer().encode(x)


# ----------------------------------------------------------------------------- feature-map crops
def test_crops_equal_cropping_then_bilinear_resizing():
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(100, 3, 7, 9, generator=generator)
    boxes = crop_boxes(100, 7, 9, generator)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 7).all() and (left + w <= 9).all()
    share = (h * w).float() / 63
    assert share.min() >= 2 / 7 - 0.1 and share.max() <= 1.0 and share.std() > 0.1
    out = resize_crops(maps, boxes)
    for i, (t, left_, hh, ww) in enumerate(boxes.tolist()):
        crop = maps[i:i + 1, :, t:t + hh, left_:left_ + ww]
        expected = F.interpolate(crop, (7, 9), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    whole = torch.tensor([[0, 0, 7, 9]])
    torch.testing.assert_close(resize_crops(maps[:1], whole), maps[:1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the method
def test_codes_are_bytes_and_counted_by_hand(toy_class_stream):
    stream = toy_class_stream
    method = conv_remind(stream, memory_bytes=400)
    result = engine.run(method, stream.first(1), epochs=2, batch_size=8)
    assert method.feature_shape == (4, 2, 2) and method.bytes_per_example == 4 * 2  # 4 positions x m=2
    codes, labels, tasks = method.stored_examples()
    assert codes.dtype == torch.uint8 and codes.shape == (50, 4, 2)  # 400 bytes / 8 per example
    memory = result.method_memory[-1]
    assert memory["stored_examples"] == 50
    assert memory["code_bytes"] == 50 * 4 * 2
    # 90 examples x 4 positions = 360 training vectors >= 256 centroids of 2 values, float32
    assert memory["codebook_bytes"] == 2 * 256 * 2 * 4
    assert memory["label_bytes"] == 50 * (8 + 8)
    assert memory["pending_bytes"] == 0  # the raw base examples are gone
    assert memory["stored_bytes"] == 400 + 4096 + 800
    # eviction from the largest class kept the two classes of the base task level
    assert torch.bincount(labels).tolist() == [25, 25] and tasks.tolist() == [0] * 50
    # the stored codes are those of base examples: every one decodes to some example's reconstruction
    x = stream[0].x_train
    assert (method.encode(x).view(len(x), 1, -1) == codes.view(1, 50, -1)).all(-1).any(0).all()


def test_g_is_frozen_after_the_base_task_and_f_trains(toy_class_stream):
    stream = toy_class_stream
    method = conv_remind(stream)
    engine.run(method, stream.first(1), epochs=1, batch_size=8)
    model = method.model
    g_before = {k: v.clone() for k, v in model.body[:3].state_dict().items()}
    f_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("body.0",))}
    assert all(not p.requires_grad for p in model.body[:3].parameters())
    method.set_training(True)
    method.begin_task(stream[1])
    assert not model.body[0].training and model.body[4].training  # G stays in eval mode
    for x, y in zip(stream[1].x_train.split(8), stream[1].y_train.split(8), strict=False):
        method.observe(x, y, 1)
    assert all(torch.equal(v, model.body[:3].state_dict()[k]) for k, v in g_before.items())
    changed = [k for k, v in f_before.items() if not torch.equal(v, model.state_dict()[k])]
    assert {"body.4.weight", "head.weight"} <= set(changed)
    # predictions go through the quantiser: F(decode(encode(G(x))))
    x = stream[1].x_test
    method.set_training(False)
    expected = method.f(method.decode(method.encode(x)))
    assert torch.equal(method.predict(x), expected)
    assert not torch.allclose(method.predict(x), model(x))


def test_streaming_loss_by_hand_with_mixup_and_replay_masks(toy_task_stream):
    stream = toy_task_stream  # task-incremental: old examples keep their own task's units
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(8,))
    method = make_method("remind", model, seed=0, lr=0.1, replay_ratio=1.5, pq_subvectors=4,
                         mixup_alpha=0.4, codebook_size=16)
    engine.run(method, stream.first(1), epochs=1, batch_size=8)
    method.begin_task(stream[1])
    stored = method.stored
    old_codes, old_labels, _ = (t.clone() for t in method.stored_examples())
    x, y = stream[1].x_train[:8], stream[1].y_train[:8]
    probe = torch.Generator()
    probe.set_state(method.generator.get_state())
    slots = torch.randperm(stored, generator=probe)[:2 * 12]  # 1.5 x 8 replayed, twice for mixup
    seed = int(torch.randint(2**62, (1,), generator=probe))
    lam = float(np.random.default_rng(seed).beta(0.4, 0.4))
    books = method.pq.codebooks  # (4 sub-vectors, k, 2 values)

    def by_hand(codes):  # one centroid per sub-vector, side by side
        return torch.cat([books[j][codes[:, j].long()] for j in range(4)], dim=1)

    with torch.no_grad():
        h = model.body(x)
        new_codes = torch.stack([((h[:, 2 * j:2 * j + 2, None] - books[j].T[None]) ** 2).sum(1).argmin(1)
                                 for j in range(4)], dim=1)
        a = by_hand(old_codes[slots[:12]].view(12, 4))
        b = by_hand(old_codes[slots[12:]].view(12, 4))
        logits_new = model.head(by_hand(new_codes))
        logits_mix = model.head(lam * a + (1 - lam) * b)
    own, old = stream.layout.task_mask(1), stream.layout.task_mask(0)
    ce_new = F.cross_entropy(mask_logits(logits_new, own), y, reduction="none")
    ce_a = F.cross_entropy(mask_logits(logits_mix, old), old_labels[slots[:12]], reduction="none")
    ce_b = F.cross_entropy(mask_logits(logits_mix, old), old_labels[slots[12:]], reduction="none")
    expected = torch.cat([ce_new, lam * ce_a + (1 - lam) * ce_b]).mean()
    loss = method.observe(x, y, 1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert method.stored == stored + 8  # the new examples' codes were stored afterwards
    assert torch.equal(method.stored_examples()[0][stored:].view(8, 4), new_codes.to(torch.uint8))


def _remind_with_capacity(capacity):
    method = Remind(torch.nn.Identity(), memory_bytes=capacity, pq_subvectors=1, seed=0)
    method.feature_shape = (2,)  # one position, one byte per example
    method.generator = torch.Generator().manual_seed(0)
    return method


def _add(method, labels, first_code):
    labels = torch.as_tensor(labels)
    codes = (torch.arange(len(labels)) + first_code).to(torch.uint8).view(-1, 1, 1)
    method.store(codes, labels, torch.zeros(len(labels), dtype=torch.long))


def test_eviction_keeps_the_budget_and_evicts_from_the_largest_class():
    method = _remind_with_capacity(6)
    _add(method, [0, 0, 0, 0, 1, 1], 100)
    assert method.stored == 6 and method.capacity == 6
    _add(method, [2], 110)  # label 0 holds the most: one of its four goes
    assert method.stored == 6 and torch.bincount(method.labels[:6]).tolist() == [3, 2, 1]
    # the first new 1 ties 0 and 1 at three: the lower unit, 0, loses one; the second makes 1 the
    # largest class (four with the new one), which loses one
    _add(method, [1, 1], 120)
    assert method.stored == 6 and torch.bincount(method.labels[:6]).tolist() == [2, 3, 1]
    evicted = set()
    for seed in range(40):  # the victim is drawn at random among the largest class's examples
        method = _remind_with_capacity(4)
        method.generator.manual_seed(seed)
        _add(method, [0, 0, 0, 1], 100)
        _add(method, [1], 110)
        survivors = method.codes[:4, 0, 0].tolist()
        assert sorted(method.labels[:4].tolist()) == [0, 0, 1, 1] and 110 in survivors
        evicted |= {100, 101, 102} - set(survivors)
    assert evicted == {100, 101, 102}
    kept_new = 0
    for seed in range(60):  # a new example of the largest class may be the one evicted
        method = _remind_with_capacity(3)
        method.generator.manual_seed(seed)
        _add(method, [0, 0, 1], 100)
        _add(method, [0], 110)
        assert torch.bincount(method.labels[:3]).tolist() == [2, 1]
        kept_new += 110 in method.codes[:3, 0, 0].tolist()
    assert 25 < kept_new < 55  # 2 in 3 keep it: 40 of 60 expected (sd 3.7)


def test_remind_forgets_less_than_finetune_on_the_toy_class_stream(toy_class_stream):
    stream = toy_class_stream
    for seed in (0, 1):
        results = {}
        for name, params in [("finetune", {"lr": 0.1}),
                             ("remind", {"lr": 0.03, "replay_ratio": 4.0, "pq_subvectors": 32})]:
            model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(32,))
            method = make_method(name, model, seed=seed, **params)
            results[name] = engine.run(method, stream, epochs=3, batch_size=8, seed=seed)
        finetune, remind = results["finetune"], results["remind"]
        assert finetune.metrics["acc"] < 0.4  # only the last task's classes survive
        assert remind.metrics["acc"] > finetune.metrics["acc"] + 0.2
        assert remind.metrics["bwt"] > finetune.metrics["bwt"] + 0.2
        old = {name: r.accuracy_matrix[-1, :-1].mean() for name, r in results.items()}
        assert old["remind"] > old["finetune"] + 0.3  # the earlier tasks after the last


def test_resume_with_crops_and_mixup_is_bit_exact(toy_class_stream):
    stream = toy_class_stream
    full = engine.run(conv_remind(stream, seed=3, memory_bytes=600), stream, epochs=2, batch_size=8, seed=3)
    seeds = iter([3, 7])

    def build():
        model = make_model("conv", stream.input_shape, stream.n_units, seed=next(seeds), channels=(4,),
                           hidden=16)
        return make_method("remind", model, seed=3, lr=0.03, replay_ratio=2.0, memory_bytes=600)

    resumed = resumed_after_first_task(build, stream, epochs=2, batch_size=8, seed=3)
    np.testing.assert_array_equal(resumed.accuracy_matrix, full.accuracy_matrix)
    assert resumed.train_loss == full.train_loss
    assert resumed.method_memory == full.method_memory


def test_two_base_tasks_keep_their_examples_until_the_fit(toy_class_stream):
    stream = toy_class_stream
    method = conv_remind(stream, base_tasks=2, memory_bytes=8 * 1000)
    result = engine.run(method, stream.first(2), epochs=2, batch_size=8)
    first, second = result.method_memory
    assert first["stored_examples"] == 0 and first["pending_bytes"] == 90 * (16 * 4 + 8 + 8)
    assert not result.method_reports[0]["g_frozen"] and result.method_reports[1]["g_frozen"]
    assert second["stored_examples"] == 180 and second["pending_bytes"] == 0  # each seen once
    assert torch.bincount(method.stored_examples()[2]).tolist() == [90, 90]


def test_bad_parameters_are_rejected(toy_class_stream):
    stream = toy_class_stream
    with pytest.raises(ValueError, match="split=7 is beyond the model's body of 6 modules"):
        engine.run(conv_remind(stream, split=7), stream)
    with pytest.raises(ValueError, match="memory_bytes=7 cannot hold one example: its codes take 8 bytes"):
        engine.run(conv_remind(stream, memory_bytes=7), stream)
    with pytest.raises(ValueError, match="pq_subvectors=3 must divide the 4 channels"):
        engine.run(conv_remind(stream, pq_subvectors=3), stream)
    with pytest.raises(ValueError, match="nn.Sequential"):
        Remind(torch.nn.Linear(16, 6)).begin_task(stream[0])
    for field, value in [("split", "0"), ("codebook_size", "257"), ("replay_ratio", "-1"),
                         ("memory_bytes", "0"), ("momentum", "1.0")]:
        with pytest.raises(ParamError, match=f"{field}={value}"):
            METHODS.resolve("remind", {field: value})


def test_raw_examples_for_budget():
    assert raw_examples_for_budget(78_400, (1, 28, 28)) == 100
    assert raw_examples_for_budget(78_399, (1, 28, 28)) == 99
    assert raw_examples_for_budget(78_400, (1, 28, 28), bytes_per_value=4) == 25
    with pytest.raises(ValueError, match="memory_bytes=-1"):
        raw_examples_for_budget(-1, (1, 28, 28))


# ----------------------------------------------------------------------------- the protocol
def test_budget_protocol_gives_replay_and_remind_the_same_bytes():
    from lifelong.reproduce_remind import REMIND_BUDGET as protocol

    runs = protocol.runs([0])
    assert len(runs) == 2 * (2 + 2 * 2)  # 2 benchmarks x (finetune, joint, 2 budgets x 2 methods)
    for config in runs:
        full = config.resolved()  # every config is valid
        assert full["benchmark_params"]["scenario"] == "class" and config.model == "conv"
    params = {(c.method, c.method_params.get("memory_size") or c.method_params.get("memory_bytes"))
              for c in runs if c.benchmark == "split-mnist"}
    assert params == {("finetune", None), ("joint", None), ("replay", 100), ("replay", 400),
                      ("remind", 100 * 784), ("remind", 400 * 784)}


def _fake_record(config, acc, memory):
    return {"config": config.resolved(), "complete": True, "metrics": {"acc": acc},
            "method_memory": [memory]}


def test_budget_table_reads_the_store_and_judges_the_goal(tmp_path):
    import dataclasses
    import json

    from lifelong.experiments.store import Store
    from lifelong.reproduce_remind import REMIND_BUDGET

    protocol = dataclasses.replace(REMIND_BUDGET, benchmarks=REMIND_BUDGET.benchmarks[:1], budgets=(100,))
    store = Store(tmp_path)
    settings = {s.label: s for s in protocol.settings()}
    bench, params = protocol.benchmarks[0]
    fake = {"finetune": (0.19, {"stored_examples": 0}),
            "replay-100": (0.80, {"stored_examples": 100, "stored_bytes": 315_200}),
            "remind-100": (0.90, {"stored_examples": 200, "code_bytes": 78_400, "stored_bytes": 114_368})}
    for label, (acc, memory) in fake.items():
        for seed in (0, 1):
            config = protocol.config(bench, params, settings[label], seed)
            path = store.run_dir(config)
            path.mkdir(parents=True)
            (path / "result.json").write_text(json.dumps(_fake_record(config, acc + 0.01 * seed, memory)))
    table = protocol.table(tmp_path, [0, 1])
    assert "| remind-100 | 100 / 78,400 | 2 | 90.5 ± 0.7 | 200 | 78,400 | 114,368 |" in table
    assert "| replay-100 | 100 / 78,400 | 2 | 80.5 ± 0.7 | 100 | 78,400 | 315,200 |" in table
    assert "| joint | - | - | (no finished run) | | | |" in table
    assert "has the higher ACC: **PASS**" in table
    # the same bytes but fewer examples or a lower ACC fail the goal
    config = protocol.config(bench, params, settings["remind-100"], 0)
    (store.run_dir(config) / "result.json").write_text(json.dumps(_fake_record(
        config, 0.5, {"stored_examples": 200, "code_bytes": 78_400, "stored_bytes": 114_368})))
    assert "has the higher ACC: **FAIL**" in protocol.table(tmp_path, [0, 1])
    assert "**NOT RUN**" in protocol.table(tmp_path / "empty", [0])
