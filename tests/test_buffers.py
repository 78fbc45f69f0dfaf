import io
import math

import pytest
import torch

from lifelong.buffers import ReservoirBuffer, TaskRingBuffer


def numbered(start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples whose input and label are their position in the stream."""
    ids = torch.arange(start, start + n)
    return ids.float().unsqueeze(1).repeat(1, 3), ids


def stored_ids(buffer) -> list[int]:
    x, y, _ = buffer.all()
    assert torch.equal(x[:, 0].long(), y)
    return y.tolist()


def reference_reservoir(batches, capacity, generator):
    """Algorithm R one example at a time, consuming the same draws as ReservoirBuffer.add."""
    slots, seen = [None] * capacity, 0
    for batch in batches:
        draws = torch.rand(len(batch), generator=generator, dtype=torch.float64).tolist()
        for example, draw in zip(batch, draws, strict=True):
            seen += 1
            if seen <= capacity:
                slots[seen - 1] = example
            else:
                j = math.floor(draw * seen)
                if j < capacity:
                    slots[j] = example
    return slots


@pytest.mark.parametrize("batch", [1, 7, 40, 300])
def test_reservoir_matches_the_sequential_algorithm(batch):
    capacity, n = 25, 300
    buffer = ReservoirBuffer(capacity)
    generator = torch.Generator().manual_seed(5)
    for start in range(0, n, batch):
        x, y = numbered(start, min(batch, n - start))
        buffer.add(x, y, task_id=y // 100, generator=generator)
    batches = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    expected = reference_reservoir(batches, capacity, torch.Generator().manual_seed(5))
    assert stored_ids(buffer) == expected
    assert len(buffer) == capacity and buffer.seen == n
    _, y, task = buffer.all()
    assert torch.equal(task, y // 100)  # task ids travel with their examples


def test_reservoir_fills_in_order_before_it_samples():
    buffer = ReservoirBuffer(10)
    generator = torch.Generator().manual_seed(0)
    x, y = numbered(0, 6)
    buffer.add(x, y, 0, generator)
    assert len(buffer) == 6 and stored_ids(buffer) == [0, 1, 2, 3, 4, 5]
    x, y = numbered(6, 4)
    buffer.add(x, y, 0, generator)
    assert stored_ids(buffer) == list(range(10))


def test_reservoir_inclusion_probability_is_uniform():
    """After n examples every example is kept with probability capacity / n, early or late."""
    capacity, n, trials = 20, 200, 2000
    counts = torch.zeros(n)
    generator = torch.Generator().manual_seed(123)
    x, y = numbered(0, n)
    for _ in range(trials):
        buffer = ReservoirBuffer(capacity)
        for start in range(0, n, 20):
            buffer.add(x[start:start + 20], y[start:start + 20], 0, generator)
        counts[buffer.all()[1]] += 1
    p = capacity / n
    mean, sd = trials * p, math.sqrt(trials * p * (1 - p))
    assert counts.sum() == trials * capacity
    # each example: within 4.5 sd of the binomial mean (the largest of 200 deviations is ~3 sd)
    assert (counts - mean).abs().max() < 4.5 * sd
    # the first, middle and last 50 examples are kept equally often (sd of a mean of 50: sd/7)
    for part in counts.split(50):
        assert abs(part.mean() - mean) < 4 * sd / math.sqrt(50)
    # a biased reservoir (e.g. accepting with capacity/n instead of capacity/i) fails this
    assert counts[:50].mean() / counts[150:].mean() == pytest.approx(1.0, abs=0.05)


def test_ring_keeps_exactly_the_latest_per_task():
    ring = TaskRingBuffer(per_task=4)
    history: dict[int, list[int]] = {0: [], 1: [], 2: []}
    start = 0
    for task, size in [(0, 3), (1, 2), (0, 3), (2, 9), (1, 1), (0, 1), (1, 5), (2, 2)]:
        x, y = numbered(start, size)
        ring.add(x, y, task)
        history[task] += y.tolist()
        start += size
    for task, ids in history.items():
        _, y, tasks = ring.all()
        assert sorted(y[tasks == task].tolist()) == sorted(ids[-4:])
        assert ring.filled(task) == 4
    assert len(ring) == 12


def test_ring_with_per_example_task_ids_and_a_partly_filled_task():
    ring = TaskRingBuffer(per_task=3)
    x, y = numbered(0, 8)
    task = torch.tensor([0, 1, 0, 0, 1, 0, 2, 0])
    ring.add(x, y, task)
    _, ys, tasks = ring.all()
    assert sorted(ys[tasks == 0].tolist()) == [3, 5, 7]  # the latest three of 0, 2, 3, 5, 7
    assert sorted(ys[tasks == 1].tolist()) == [1, 4]
    assert ys[tasks == 2].tolist() == [6]
    assert len(ring) == 6 and ring.filled(1) == 2


@pytest.mark.parametrize("kind", ["reservoir", "ring"])
def test_sampling_is_deterministic_for_a_seed_and_draws_distinct_examples(kind):
    buffer = ReservoirBuffer(50) if kind == "reservoir" else TaskRingBuffer(25)
    fill = torch.Generator().manual_seed(0)
    for start in range(0, 120, 10):
        x, y = numbered(start, 10)
        buffer.add(x, y, start // 60, fill)
    first = buffer.sample(10, torch.Generator().manual_seed(7))
    again = buffer.sample(10, torch.Generator().manual_seed(7))
    other = buffer.sample(10, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])
    stored = set(stored_ids(buffer))
    assert len(set(first[1].tolist())) == 10 and set(first[1].tolist()) <= stored
    x, y, _ = buffer.sample(500, torch.Generator().manual_seed(7))  # more than stored: all of them
    assert sorted(y.tolist()) == sorted(stored)


def test_sampling_covers_the_buffer_uniformly():
    buffer = ReservoirBuffer(20)
    x, y = numbered(0, 20)
    buffer.add(x, y, 0)
    generator = torch.Generator().manual_seed(1)
    counts = torch.zeros(20)
    for _ in range(2000):
        counts[buffer.sample(5, generator)[1]] += 1
    # each example drawn with probability 5/20 per call: mean 500, sd ~19
    assert (counts - 500).abs().max() < 4.5 * math.sqrt(2000 * 0.25 * 0.75)


def test_empty_buffers_refuse_to_sample_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="empty buffer"):
        ReservoirBuffer(3).sample(1)
    with pytest.raises(ValueError, match="empty buffer"):
        TaskRingBuffer(3).sample(1)
    with pytest.raises(ValueError, match="capacity=0"):
        ReservoirBuffer(0)
    with pytest.raises(ValueError, match="per_task=0"):
        TaskRingBuffer(0)


def test_nbytes_counts_the_preallocated_storage():
    reservoir = ReservoirBuffer(30)
    assert reservoir.nbytes == 0
    x, y = numbered(0, 5)  # 3 float32 inputs, int64 label, int64 task id: 28 bytes per row
    reservoir.add(x, y, 0)
    assert reservoir.nbytes == 30 * 28
    ring = TaskRingBuffer(4)
    ring.add(x, y, 0)
    ring.add(x, y, 3)
    assert ring.nbytes == 2 * 4 * 28


@pytest.mark.parametrize("kind", ["reservoir", "ring"])
def test_state_round_trip_continues_identically(kind):
    def make():
        return ReservoirBuffer(16) if kind == "reservoir" else TaskRingBuffer(6)

    buffer, generator = make(), torch.Generator().manual_seed(3)
    for start in range(0, 50, 10):
        x, y = numbered(start, 10)
        buffer.add(x, y, start // 20, generator)
    saved = io.BytesIO()
    torch.save({"buffer": buffer.state_dict(), "generator": generator.get_state()}, saved)
    state = torch.load(io.BytesIO(saved.getvalue()))
    restored, restored_generator = make(), torch.Generator()
    restored.load_state_dict(state["buffer"])
    restored_generator.set_state(state["generator"])
    for target, gen in [(buffer, generator), (restored, restored_generator)]:
        x, y = numbered(50, 30)
        target.add(x, y, 2, gen)
    assert stored_ids(buffer) == stored_ids(restored) and len(buffer) == len(restored)
    a, b = buffer.sample(8, generator), restored.sample(8, restored_generator)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
