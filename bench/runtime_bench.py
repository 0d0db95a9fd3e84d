"""Runtime step vs plain `mlflow run --env-manager local`, same project, same server.

Rounds alternate the two commands against one `mlflow server` on loopback, the order
swapped every round, so machine noise and cache warmth hit both alike; the medians (and
min-max), their ratio and the absolute overhead are printed (target ratio <= 1.10).
Usage: python bench/runtime_bench.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from devservices import MlflowServer  # noqa: E402
from result import ratio, table, write_result  # noqa: E402

EXAMPLE = REPO / "examples" / "sklearn-logreg"
VENV_BIN = Path(sys.executable).parent


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"failed: {argv[0]} ...\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mls-bench-") as tmp:
        root = Path(tmp)
        codeset = Path(shutil.copytree(EXAMPLE, root / "codeset"))
        server = MlflowServer(root / "server").start()
        try:
            env = {**os.environ, "MLFLOW_TRACKING_URI": server.url,
                   "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
            step = [str(VENV_BIN / "mlflow-steps"), "run", str(codeset),
                    "--mlflow-experiment", "bench", "--mlflow-entrypoint-args", "C=0.5"]
            plain = [str(VENV_BIN / "mlflow"), "run", str(codeset), "--env-manager", "local",
                     "--experiment-name", "bench", "-P", "C=0.5"]
            timed(step, env, root)  # warm-up: creates the experiment, fills OS caches
            timed(plain, env, root)
            step_times, plain_times = [], []
            for round_ in range(args.rounds):
                pair = [(step, step_times), (plain, plain_times)]
                for command, times in pair if round_ % 2 == 0 else reversed(pair):
                    times.append(timed(command, env, root))
        finally:
            server.stop()
    step_median, plain_median = statistics.median(step_times), statistics.median(plain_times)
    print(f"rounds                 {args.rounds}")
    print(f"mlflow run (median)    {plain_median:6.2f} s  ({min(plain_times):.2f}-"
          f"{max(plain_times):.2f})")
    print(f"mlflow-steps run       {step_median:6.2f} s  ({min(step_times):.2f}-"
          f"{max(step_times):.2f})")
    print(f"overhead               {step_median - plain_median:+6.2f} s")
    print(f"overhead ratio         {step_median / plain_median:6.3f}   (target <= 1.10)")
    write_result("runtime", __doc__.splitlines()[0], vars(args), [table(
        "One training run of the example against a local MLflow server",
        {"time": "s"}, {"mlflow run --env-manager local": {"time": plain_times},
                        "mlflow-steps run": {"time": step_times}})],
        [ratio("mlflow-steps run / mlflow run", step_median / plain_median, goal=1.10),
         ratio("overhead", step_median - plain_median, unit="s")])


if __name__ == "__main__":
    main()
