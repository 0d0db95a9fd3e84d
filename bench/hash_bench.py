"""Hash time for a codeset with 1 MB vs 1 GB of source/data files, measured side by side.

The tag depends only on environment files, so the ratio should be ~1.
Usage: python bench/hash_bench.py [--big-mb 1024] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from result import ratio, table, write_result

from mlflow_steps.env.hashing import env_tag
from mlflow_steps.env.spec import BuildOptions, resolve_env

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sklearn-logreg"
CHUNK = os.urandom(1 << 20)


def make_codeset(root: Path, data_mb: int) -> Path:
    """Copy the example codeset and add ``data_mb`` MB of data files in 64 MB pieces."""
    shutil.copytree(EXAMPLE, root)
    (root / "data").mkdir()
    remaining, index = data_mb, 0
    while remaining > 0:
        piece = min(64, remaining)
        with (root / "data" / f"part-{index:03d}.bin").open("wb") as handle:
            for _ in range(piece):
                handle.write(CHUNK)
        remaining -= piece
        index += 1
    return root


def time_hash(codeset: Path) -> tuple[float, str]:
    started = time.perf_counter()
    tag = env_tag(resolve_env(codeset, BuildOptions())[1])
    return time.perf_counter() - started, tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        small = make_codeset(Path(tmp) / "small", 1)
        big = make_codeset(Path(tmp) / "big", args.big_mb)
        time_hash(small)  # warm imports once
        times: dict[str, list[float]] = {"small": [], "big": []}
        tags = set()
        for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
            for name, path in (("small", small), ("big", big)):
                elapsed, tag = time_hash(path)
                times[name].append(elapsed)
                tags.add(tag)
        small_ms = statistics.median(times["small"]) * 1000
        big_ms = statistics.median(times["big"]) * 1000
        print(f"codeset 1 MB data:      {small_ms:8.2f} ms (median of {args.rounds})")
        print(f"codeset {args.big_mb} MB data: {big_ms:8.2f} ms (median of {args.rounds})")
        print(f"ratio big/small:        {big_ms / small_ms:8.2f}")
        print(f"same tag for both:      {len(tags) == 1}")
    ms = {name: [seconds * 1000 for seconds in values] for name, values in times.items()}
    write_result("hash", __doc__.splitlines()[0], vars(args), [table(
        "Hash time (the example codeset plus data files)", {"hash": "ms"},
        {"1 MB data": {"hash": ms["small"]}, f"{args.big_mb} MB data": {"hash": ms["big"]}})],
        [ratio("big / small", big_ms / small_ms)],
        checks={"same tag for both": "yes" if len(tags) == 1 else "no"})


if __name__ == "__main__":
    main()
