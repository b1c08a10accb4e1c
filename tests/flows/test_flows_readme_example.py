"""The README's library example runs exactly as written and shows the ActNorm init call."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def library_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- library-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its library example"
    return match.group(1)


def test_the_example_initialises_actnorm_before_training():
    code = library_example()
    assert code.index("flows.initialize_from_batch(model") < code.index("loss.backward()")


@pytest.mark.slow  # ~10 s: 50 steps and a k=64 score
def test_the_library_example_runs_without_an_actnorm_warning(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        exec(compile(library_example(), "README.md", "exec"), {})  # noqa: S102
    k1, k64 = map(float, capsys.readouterr().out.split())
    assert k64 <= k1 < 4.0
