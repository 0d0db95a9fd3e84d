"""Extension version matching: an exact version string or a semver range.

FuseML matched with Go's Masterminds/semver, whose constraints (``~1.10.0``, ``^1.2``,
``>=2``, ``>= 1.2, < 3``, ``1.x``, ``a || b``) are npm's range syntax plus commas for
"and". ``node-semver`` (a maintained port of npm's semver, the reference implementation
of that syntax) evaluates them once commas become spaces; ``packaging`` speaks PEP 440,
and ``semver``/``semantic_version`` lack npm ranges or are unmaintained.
"""

from __future__ import annotations

from types import ModuleType

from mlflow_steps.core.errors import StepError


def _semver() -> ModuleType:
    try:
        import nodesemver  # optional: only version ranges need node-semver
    except ImportError:
        raise StepError("version ranges need node-semver: "
                        "pip install 'mlflow-steps[workflow]'") from None
    return nodesemver


def _npm_range(constraint: str) -> str:
    return " ".join(constraint.replace(",", " ").split())


def is_valid_constraint(constraint: str) -> bool:
    """Whether ``constraint`` is a version or a range that can match anything."""
    return _semver().valid_range(_npm_range(constraint), loose=True) is not None


def version_matches(version: str, constraint: str) -> bool:
    """Exact string equality, else semver range satisfaction (unparsable versions fail)."""
    if not constraint or version == constraint:
        return True
    try:
        return bool(_semver().satisfies(version, _npm_range(constraint), loose=True))
    except ValueError:
        return False
