"""Studies that reproduce a paper's experiment on any trained run (`harden study ...`).

Each study is a library function returning a result dataclass with `to_dict()`, a text table
and a plot; `harden/cli/study.py` wraps them.
"""
