"""KV-cache figures as people read them: grouped digits, GB/GiB, tokens, sequence lengths."""

from __future__ import annotations

from vllm_provision import GIB


def group_digits(n: int | float, sep: str = " ") -> str:
    """132349 -> '132 349' (space-grouped thousands, as the KV-cache explanation prints them)."""
    return f"{int(n):,}".replace(",", sep)


def gb(n: float) -> str:
    """Bytes in decimal GB with one decimal (as ``nvidia-smi``/the notes speak of '80 GB')."""
    return f"{n / 1e9:.1f} GB"


def gib(n: float) -> str:
    v = n / GIB
    return f"{v:.0f} GiB" if abs(v - round(v)) < 0.005 else f"{v:.2f} GiB"


def tokens(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 10_000:
        return f"{n / 1e3:.0f} k"
    return group_digits(n)


def seq_len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else group_digits(n)
