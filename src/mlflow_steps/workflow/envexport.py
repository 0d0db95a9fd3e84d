"""`mlflow-steps env`: extension configuration as shell ``export`` lines or a dotenv file."""

from __future__ import annotations

import shlex

from mlflow_steps.workflow.model import SELECTOR_FIELDS, Selector
from mlflow_steps.workflow.nodes import Where

DEFAULT_SELECTOR = "service_resource=mlflow-tracking"
FORMATS = ("export", "dotenv")


def parse_selector(text: str, index: int) -> Selector:
    """``key=value,key=value`` (keys: name and FuseML's selector fields) as a Selector."""
    where = Where("--selector", 0, text)
    fields: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("name", *SELECTOR_FIELDS) or not value.strip():
            raise where.error(f"expected key=value pairs with keys from: name, "
                              f"{', '.join(SELECTOR_FIELDS)}; got {item!r}")
        fields[key] = value.strip()
    name = fields.pop("name", f"selector-{index + 1}")
    return Selector(name, tuple((k, fields[k]) for k in SELECTOR_FIELDS if k in fields), where)


def format_env(env: dict[str, str], style: str) -> str:
    """POSIX-shell ``export`` lines, or dotenv lines (single-quoted, ``\\`` and ``'`` escaped)."""
    if style == "export":
        return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())
    return "".join(
        f"{key}='{value.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'\n"
        for key, value in env.items())
