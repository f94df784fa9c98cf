"""The two example tasks of pyoco-server 0.5's quickstart (`add_one >> to_text`, `x: 1` -> `v=2`)."""


def add_one(x=0):
    return x + 1


def to_text(add_one):
    return f"v={add_one}"
