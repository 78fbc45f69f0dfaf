"""Seeds derived from several integers (a task, an epoch...), the same on every platform."""


def mix_seed(*numbers: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    value = 0x9E3779B97F4A7C15
    for number in numbers:
        value = (value ^ (int(number) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2)))
        value &= (1 << 63) - 1
    return value
