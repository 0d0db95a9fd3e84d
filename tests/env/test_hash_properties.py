"""The tag is invariant to formatting and non-environment files, sensitive to the env."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import MINIMAL_MLPROJECT, write_codeset

from mlflow_steps.env.hashing import env_tag
from mlflow_steps.env.spec import BuildOptions, resolve_env

NAMES = ["scikit-learn", "numpy", "typing-extensions", "pyyaml", "python-dateutil"]
OPERATORS = ["==", ">=", "<=", "~=", "!="]
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])

requirement = st.tuples(
    st.sampled_from(NAMES), st.sampled_from(OPERATORS),
    st.tuples(st.integers(0, 30), st.integers(0, 30)).map(lambda v: f"{v[0]}.{v[1]}"),
)
requirement_sets = st.lists(requirement, min_size=1, max_size=5, unique_by=lambda r: r[0])


def tag_of(files: dict[str, str | bytes], options: BuildOptions | None = None) -> str:
    with tempfile.TemporaryDirectory() as root:
        codeset = write_codeset(Path(root) / "cs", {"MLproject": MINIMAL_MLPROJECT, **files})
        return env_tag(resolve_env(codeset, options or BuildOptions())[1])


def plain(reqs: list[tuple[str, str, str]]) -> str:
    return "".join(f"{name}{op}{version}\n" for name, op, version in reqs)


@st.composite
def reformatted(draw, reqs: list[tuple[str, str, str]]) -> str:
    """The same requirements: shuffled, re-cased, _/- swapped, commented, spaced, CRLF."""
    order = draw(st.permutations(reqs))
    lines = []
    for name, op, version in order:
        if draw(st.booleans()):
            name = name.upper()
        if draw(st.booleans()):
            name = name.replace("-", "_")
        spaced = draw(st.sampled_from(["", " ", "  "]))
        trailing = draw(st.sampled_from(["", "  ", "\t"]))
        line = f"{name}{spaced}{op}{spaced}{version}{trailing}"
        if draw(st.booleans()):
            line += "  # pinned by ops"
        lines.append(line)
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "# comment", "   "])))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines) + newline


@PROPERTY_SETTINGS
@given(data=st.data(), reqs=requirement_sets)
def test_formatting_does_not_change_the_tag(data, reqs) -> None:
    text = data.draw(reformatted(reqs))
    assert tag_of({"requirements.txt": text}) == tag_of({"requirements.txt": plain(reqs)})


@PROPERTY_SETTINGS
@given(reqs=requirement_sets,
       extra=st.dictionaries(st.sampled_from(["train.py", "data/x.csv", "README.md", "src/a.py",
                                              "notes.txt", "model.pkl"]),
                             st.binary(max_size=64), max_size=4))
def test_non_environment_files_do_not_change_the_tag(reqs, extra) -> None:
    assert tag_of({"requirements.txt": plain(reqs), **extra}) == (
        tag_of({"requirements.txt": plain(reqs)}))


@PROPERTY_SETTINGS
@given(reqs=requirement_sets, bump=st.integers(1, 5))
def test_changing_a_version_changes_the_tag(reqs, bump) -> None:
    name, op, version = reqs[0]
    major, minor = version.split(".")
    changed = [(name, op, f"{major}.{int(minor) + bump}"), *reqs[1:]]
    assert tag_of({"requirements.txt": plain(changed)}) != (
        tag_of({"requirements.txt": plain(reqs)}))


def test_every_build_input_changes_the_tag() -> None:
    base = {"requirements.txt": "-r more.txt\nnumpy\n", "more.txt": "pandas\n"}
    tags = {
        "base": tag_of(base),
        "added requirement": tag_of({**base, "requirements.txt": "-r more.txt\nnumpy\nsix\n"}),
        "included file content": tag_of({**base, "more.txt": "pandas==2.2\n"}),
        "base image": tag_of(base, BuildOptions(base_image="localhost:5000/python:3.11-slim")),
        "base image digest": tag_of(base, BuildOptions(base_image_digest="sha256:" + "0" * 64)),
        "index url": tag_of(base, BuildOptions(index_url="https://mirror.example/simple")),
        "python version": tag_of({"python_env.yaml": "python: '3.12'\ndependencies: "
                                                     "[-r requirements.txt]\n", **base}),
        "strategy": tag_of({"conda.yaml": "dependencies: [python=3.11, pip, {pip: [numpy, "
                                          "pandas]}]\n"}, BuildOptions(env_strategy="conda")),
        "marker": tag_of({**base, "requirements.txt": "-r more.txt\nnumpy; os_name=='nt'\n"}),
        "local wheel": tag_of({**base, "requirements.txt": "-r more.txt\nnumpy\nw-1-py3-none-any"
                               ".whl\n", "w-1-py3-none-any.whl": b"PK1"}),
    }
    assert len(set(tags.values())) == len(tags), tags
    wheel_v2 = tag_of({**base, "requirements.txt": "-r more.txt\nnumpy\nw-1-py3-none-any.whl\n",
                       "w-1-py3-none-any.whl": b"PK2"})
    assert wheel_v2 != tags["local wheel"]


def test_credentials_in_build_index_do_not_change_the_tag() -> None:
    base = {"requirements.txt": "numpy\n"}
    assert tag_of(base, BuildOptions(index_url="https://a:b@mirror.example/simple")) == (
        tag_of(base, BuildOptions(index_url="https://mirror.example/simple")))


def test_conda_channel_order_matters_but_dependency_order_does_not() -> None:
    env = "channels: [{0}]\ndependencies: [{1}]\n"
    one = tag_of({"conda.yaml": env.format("conda-forge, defaults", "python=3.11, numpy, scipy")})
    same = tag_of({"conda.yaml": "# c\n" + env.format("conda-forge, defaults",
                                                      "SciPy, numpy, python=3.11")})
    other = tag_of({"conda.yaml": env.format("defaults, conda-forge", "python=3.11, numpy, scipy")})
    assert one == same != other


conda_name = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True)
conda_version = st.from_regex(r"[0-9][0-9a-z_]{0,2}(\.[0-9a-z_]{1,3}){0,3}", fullmatch=True)
conda_spec = st.builds(
    lambda name, space1, op, space2, version, star: (
        name if op is None else f"{name}{space1}{op}{space2}{version}{star}"),
    conda_name, st.sampled_from(["", " "]),
    st.one_of(st.none(), st.sampled_from(["=", "==", ">=", "<=", "!=", ">", "<", "~=", "=="])),
    st.sampled_from(["", " "]), conda_version, st.sampled_from(["", ".*"]))


@given(conda_spec)
@settings(max_examples=400, deadline=None)
def test_plain_conda_specs_normalise_exactly_as_conda_lock(spec: str) -> None:
    """The fast path (no conda-lock import) agrees with conda's MatchSpec wherever it
    applies; other specs go to MatchSpec."""
    from mlflow_steps.core.errors import StepError
    from mlflow_steps.env.conda import _plain_conda_spec, matchspec_text

    fast = _plain_conda_spec(spec)
    if fast is None:
        return
    try:
        expected = matchspec_text(spec, source="conda.yaml", field="dependencies")
    except StepError:
        raise AssertionError(f"{spec!r}: MatchSpec refuses what the fast path accepts") from None
    assert fast == expected, spec


def test_plain_conda_spec_fast_path_covers_common_specs() -> None:
    from mlflow_steps.env.conda import _plain_conda_spec

    for spec in ("python=3.11", "numpy", "pip", "scikit-learn>=1.3", "pandas==2.1.4"):
        assert _plain_conda_spec(spec) is not None
    for spec in ("conda-forge::numpy", "numpy 1.2 py_0", "numpy>=1.2,<2", "numpy=1.2=py_0"):
        assert _plain_conda_spec(spec) is None


def test_the_uv_version_in_the_tag_is_the_installed_one() -> None:
    """uv_version reads the dist-info directory's name (fast path of the skip decision):
    the same as importlib.metadata says."""
    from importlib.metadata import version

    from mlflow_steps.env.hashing import uv_version

    assert uv_version() == version("uv")
