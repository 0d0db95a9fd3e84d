"""pip requirement parsing and normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.helpers import write_codeset

from mlflow_steps.core.errors import StepError
from mlflow_steps.env.requirements import logical_lines, parse_requirements_file


def parse(codeset: Path, text: str, extra: dict[str, str | bytes] | None = None):
    write_codeset(codeset, {"requirements.txt": text, **(extra or {})})
    return parse_requirements_file(codeset, codeset / "requirements.txt")


def test_names_specifiers_and_markers_are_normalised(tmp_path: Path) -> None:
    parser = parse(tmp_path, "Scikit_Learn >= 1.3 , < 2\nrequests[Security,socks]==2.31 ;"
                             " python_version<'3.12'\nNumPy\n")
    assert sorted(parser.spec.requirements) == [
        "numpy",
        'requests[security,socks]==2.31; python_version < "3.12"',
        "scikit-learn<2,>=1.3",
    ]
    assert parser.spec.names() == {"numpy", "requests", "scikit-learn"}


def test_comments_continuations_and_options(tmp_path: Path) -> None:
    parser = parse(tmp_path, "# top\n--extra-index-url https://mirror.example/simple\n--pre\n"
                             "pandas \\\n  ==2.2  # pinned\n--only-binary=:all:\n")
    spec = parser.spec.canonical()
    assert spec["requirements"] == ["pandas==2.2"]
    assert spec["extra_index_urls"] == ["https://mirror.example/simple"]
    assert spec["options"] == ["--only-binary=:all:", "--pre"]


def test_includes_are_followed_relative_to_the_including_file(tmp_path: Path) -> None:
    parser = parse(tmp_path, "-r reqs/base.txt\n-c reqs/pins.txt\nflask\n", {
        "reqs/base.txt": "click\n-r more.txt\n",
        "reqs/more.txt": "jinja2\n",
        "reqs/pins.txt": "click==8.1.7\n",
    })
    assert sorted(parser.spec.requirements) == ["click", "flask", "jinja2"]
    assert parser.spec.constraints == ["click==8.1.7"]


def test_hash_options_are_kept_and_sorted(tmp_path: Path) -> None:
    parser = parse(tmp_path, "six==1.16.0 --hash=sha256:bb --hash=sha256:aa\n")
    assert parser.spec.requirements == ["six==1.16.0 --hash=sha256:aa --hash=sha256:bb"]


def test_direct_url_and_local_wheel(tmp_path: Path) -> None:
    parser = parse(tmp_path, "pkg @ https://files.example/pkg-1.0.tar.gz\n./dist/my_pkg-1.0-py3-none-any.whl\n",
                   {"dist/my_pkg-1.0-py3-none-any.whl": b"PK\x03\x04wheel"})
    assert parser.spec.requirements == ["pkg @ https://files.example/pkg-1.0.tar.gz"]
    [artifact] = parser.spec.local_artifacts
    assert artifact.name == "my_pkg-1.0-py3-none-any.whl" and len(artifact.sha256) == 64
    assert parser.local_files[artifact.name].is_file()


@pytest.mark.parametrize(("text", "extra", "message"), [
    ("-e .\n", {}, "editable requirement"),
    ("git+https://github.com/x/y.git\n", {}, "bare URL"),
    ("y @ git+https://github.com/x/y.git\n", {}, "VCS and file URLs"),
    ("./localdir\n", {"localdir/setup.py": ""}, "local directory"),
    ("-r ../outside.txt\n", {}, "outside the codeset"),
    ("-r /etc/passwd\n", {}, "absolute path"),
    ("--index-url https://user:secret@mirror.example/simple\n", {}, "embeds credentials"),
    ("--index-url https://mirror.example/simple?access_token=secret\n", {}, "embeds credentials"),
    ("pkg @ https://f.example/p.whl?X-Amz-Signature=secret\n", {}, "embeds credentials"),
    ("pkg @ git+https://oauth2:secret@gitlab.example/r.git\n", {}, "oauth2:***@"),
    ("-r a.txt\n", {"a.txt": "-r b.txt\n", "b.txt": "-r a.txt\n"}, "a.txt -> b.txt -> a.txt"),
    ("-r a.txt\n", {"a.txt": "-r requirements.txt\n"}, "include cycle"),
    ("numpy=>1\n", {}, "not a valid requirement"),
    ("--use-feature=x\n", {}, "unsupported pip option"),
])
def test_rejections_name_the_line(tmp_path: Path, text: str, extra: dict, message: str) -> None:
    with pytest.raises(StepError) as caught:
        parse(tmp_path / "cs", text, extra)
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)
    assert caught.value.source is not None


def test_symlink_leaving_the_codeset_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("numpy\n")
    codeset = tmp_path / "cs"
    codeset.mkdir()
    (codeset / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(StepError, match="outside the codeset"):
        parse(codeset, "-r link.txt\n")


def test_logical_lines_reports_first_line_of_a_continuation() -> None:
    assert logical_lines("a \\\n b\n\n# c\nd # e\n") == [("line 1", "a b"), ("line 5", "d")]


@pytest.mark.parametrize(("link", "message"), [
    ("self.txt", "'self.txt' loops"), ("missing.txt", "symlink to 'missing.txt' does not resolve")])
def test_include_symlink_that_loops_or_dangles_is_named(tmp_path: Path, link: str,
                                                        message: str) -> None:
    codeset = tmp_path / "cs"
    codeset.mkdir()
    (codeset / "self.txt").symlink_to(link)
    with pytest.raises(StepError, match=message):
        parse(codeset, "numpy\n-r self.txt\n")
