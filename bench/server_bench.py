"""Token-gate overhead of `mlflow-steps server serve`, and metrics written vs stored.

Two servers from the same build on one PostgreSQL, one with MLFLOW_TRACKING_TOKEN and one
without. 16 concurrent clients post `log-batch` requests (what MlflowClient.log_batch
sends); rounds alternate between the servers so drift hits both alike. Prints requests/s
per server, the overhead of the gate (target <= 5 %), and the metrics each server was sent
against those it stored (must be equal; the exit code is 1 if not).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from devservices import Postgres, TrackingServer
from result import ratio, table, write_result

TOKEN = "bench-token-5f4e3d2c1b0a99887766"
LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"


def create_run(url: str, headers: dict[str, str]) -> str:
    api = f"{url}/api/2.0/mlflow"
    experiment = requests.post(f"{api}/experiments/create", json={"name": "bench"},
                               headers=headers, timeout=30).json()["experiment_id"]
    return requests.post(f"{api}/runs/create", json={"experiment_id": experiment},
                         headers=headers, timeout=30).json()["run"]["info"]["run_id"]


def client_loop(url: str, headers: dict[str, str], run_id: str, key: str, first_step: int,
                requests_per_client: int, batch: int, failures: list[str]) -> None:
    with requests.Session() as session:
        session.headers.update(headers)
        for i in range(requests_per_client):
            step0 = first_step + i * batch
            metrics = [{"key": key, "value": float(s), "timestamp": 0, "step": s}
                       for s in range(step0, step0 + batch)]
            response = session.post(url + LOG_BATCH, json={"run_id": run_id, "metrics": metrics},
                                    timeout=60)
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")


def one_round(url: str, headers: dict[str, str], run_id: str, round_no: int, clients: int,
              requests_per_client: int, batch: int, failures: list[str]) -> float:
    """Seconds for ``clients`` threads to post their requests."""
    first_step = round_no * requests_per_client * batch
    threads = [threading.Thread(target=client_loop, args=(
        url, headers, run_id, f"m{c}", first_step, requests_per_client, batch, failures))
        for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def stored_metrics(url: str, headers: dict[str, str], run_id: str, clients: int) -> int:
    total = 0
    for c in range(clients):
        token = None
        while True:
            params = {"run_id": run_id, "metric_key": f"m{c}", "max_results": 25000,
                      **({"page_token": token} if token else {})}
            page = requests.get(f"{url}/api/2.0/mlflow/metrics/get-history", params=params,
                                headers=headers, timeout=60).json()
            total += len(page.get("metrics", []))
            token = page.get("next_page_token")
            if not token:
                break
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=8, help="per client per round")
    parser.add_argument("--batch", type=int, default=100, help="metrics per request")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mls-sbench-", dir="/tmp"))
    root.chmod(0o711)  # the cluster directory inside belongs to the `postgres` user
    started: list = []
    try:
        postgres = Postgres(root / "pg")
        started.append(postgres.start())
        servers = {}
        for name, env in (("open", {}), ("token", {"MLFLOW_TRACKING_TOKEN": TOKEN})):
            server = TrackingServer(root / name, workers=args.workers, env={
                "MLFLOW_BACKEND_STORE_URI": postgres.create_database(f"bench_{name}"), **env})
            started.append(server.start())
            headers = {"Authorization": f"Bearer {TOKEN}"} if env else {}
            servers[name] = (server.url, headers, create_run(server.url, headers))

        seconds: dict[str, list[float]] = {name: [] for name in servers}
        failures: list[str] = []
        for round_no in range(args.rounds):
            order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
            for name in order:
                url, headers, run_id = servers[name]
                seconds[name].append(one_round(url, headers, run_id, round_no, args.clients,
                                               args.requests, args.batch, failures))

        sent_requests = args.rounds * args.clients * args.requests
        print(f"{args.clients} clients, {args.rounds} alternating rounds, {sent_requests} "
              f"log-batch requests of {args.batch} metrics per server, "
              f"{args.workers} uvicorn workers, PostgreSQL store")
        rate = {}
        stored = {}
        written = sent_requests * args.batch
        ok = not failures
        for name, (url, headers, run_id) in servers.items():
            rate[name] = sent_requests / sum(seconds[name])
            stored[name] = stored_metrics(url, headers, run_id, args.clients)
            ok &= stored[name] == written
            print(f"  {name:5}  {rate[name]:8.1f} requests/s  {rate[name] * args.batch:9.0f} "
                  f"metrics/s  written {written}  stored {stored[name]}"
                  f"  {'equal' if stored[name] == written else 'MISMATCH'}")
        overall = (1 - rate["token"] / rate["open"]) * 100
        per_round = statistics.median(
            (1 - open_seconds / gated_seconds) * 100
            for open_seconds, gated_seconds in zip(seconds["open"], seconds["token"], strict=True))
        print(f"token gate overhead: {overall:+.1f} % overall, {per_round:+.1f} % median of "
              f"{args.rounds} paired rounds (target <= 5 %: "
              f"{'met' if max(overall, per_round) <= 5 else 'not met'})")
        for failure in failures[:5]:
            print(f"  failed request: {failure}")
        write_result("server", __doc__.splitlines()[0], vars(args), [table(
            f"{args.clients} clients posting log-batch requests of {args.batch} metrics, "
            f"{args.workers} uvicorn workers, PostgreSQL store",
            {"requests/s": "requests/s", "round": "s", "written": "metrics", "stored": "metrics"},
            {name: {"requests/s": rate[name], "round": seconds[name], "written": written,
                    "stored": stored[name]} for name in servers},
            {"open": "no token", "token": "MLFLOW_TRACKING_TOKEN set"})],
            [ratio("token gate overhead, overall", overall, goal=5, unit="%"),
             ratio("token gate overhead, median of paired rounds", per_round, goal=5, unit="%")],
            checks={"stored = written": "yes" if all(
                        count == written for count in stored.values()) else "no",
                    "failed requests": str(len(failures))})
        return 0 if ok else 1
    finally:
        for service in reversed(started):
            service.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
