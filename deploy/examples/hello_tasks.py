"""Example tasks for the quick start: `add_one >> to_text` with `x: 1` gives "v=2"."""


def add_one(x: int = 0) -> int:
    return x + 1


def to_text(add_one: int) -> str:
    return f"v={add_one}"
