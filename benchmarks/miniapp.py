"""Mini-app requests per second and latency, next to a minimal page on the same server.

One process serves closeloop's web app (uvicorn, one worker) with one extra
route, a minimal Starlette page (`/bench/hello`, plain text) behind the same
middleware. This process is the load: C clients on loopback, each with a
verified mini-app session, ask for the session's page (`GET /m`: the session
read and touched in the database, the case, the options policy computes, the
rendered page) for T seconds; then the same clients ask for the minimal page
for as long. Prints requests per second, p50 and p99 latency of each, and the
ratios.

    python benchmarks/miniapp.py [--clients C] [--seconds T]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ACCOUNT = {
    "first_name": "Ana",
    "time_zone": "America/New_York",
    "facts": {"flags": [], "balance": 300.0, "state": "NY", "product": "card", "days_past_due": 4},
    "contacts": [{"channel": "sms", "address": "+12125550123", "consent": True}],
    "secrets": {"date_of_birth": "1980-02-03", "postal_code": "10001"},
}


def serve(port: int, data: Path) -> None:
    """The server process: closeloop's web app plus the minimal page."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    from closeloop.app import Settings, build, settle_heap
    from closeloop.web import create_api

    settings = Settings(
        data_dir=data,
        workflows=[ROOT / "examples" / "failed_payment.yaml"],
        public_url=f"http://127.0.0.1:{port}",
    )
    app = build(settings)
    api = create_api(app)

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    api.add_route("/bench/hello", hello)
    settle_heap()
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def prepare(data: Path, clients: int) -> list[str]:
    """Cases with fresh links, one per client (before the server starts)."""
    from closeloop.app import Settings, TriggerIn, build

    app = build(Settings(data_dir=data, workflows=[ROOT / "examples" / "failed_payment.yaml"]))
    app.ledger.add_accounts([{**ACCOUNT, "account_id": f"A{i}"} for i in range(clients)])
    results = app.runtime.intake(
        [
            TriggerIn(
                id=f"t{i}",
                type="payment.failed",
                data={
                    "account_id": f"A{i}",
                    "amount_due": "120.50",
                    "decline_code": "51",
                    "due_date": "2026-03-01",
                },
            )
            for i in range(clients)
        ]
    )
    tokens = []
    for result in results:
        assert result.case_id is not None
        tokens.append(app.service.issue_link(result.case_id, "sms").rsplit("/", 1)[1])
    app.close()
    return tokens


def session(base: str, token: str) -> dict[str, str]:
    """Open the link and pass identity, as a browser would; the cookie header to send."""
    with httpx.Client(base_url=base, follow_redirects=False) as client:
        opened = client.post(f"/m/{token}")
        cookie = opened.headers["set-cookie"].split(";", 1)[0]
        page = client.get("/m", headers={"cookie": cookie}).text
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        checked = client.post(
            "/m/identity",
            headers={"cookie": cookie},
            data={"csrf": csrf, "date_of_birth": "1980-02-03", "postal_code": "10001"},
        )
        assert checked.status_code == 303, checked.text
        return {"cookie": checked.headers["set-cookie"].split(";", 1)[0]}


def load(base: str, path: str, headers: list[dict[str, str]], seconds: float) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(sent: dict[str, str]) -> None:
        mine = []
        with httpx.Client(base_url=base) as http:
            while time.monotonic() < stop:
                started = time.perf_counter()
                answer = http.get(path, headers=sent)
                mine.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.status_code
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(h,)) for h in headers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]))
        return
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be at least 1 and --seconds above 0")
    from closeloop.channels.smtp import free_port

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        tokens = prepare(data, args.clients)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), str(data)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.1)
            headers = [session(base, token) for token in tokens]
            load(base, "/m", headers, 1.0)  # warm up both paths
            load(base, "/bench/hello", headers, 1.0)
            miniapp = load(base, "/m", headers, args.seconds)
            minimal = load(base, "/bench/hello", headers, args.seconds)
        finally:
            server.terminate()
            server.wait(timeout=10)
    rows = {}
    for name, latencies in (("mini-app page (GET /m)", miniapp), ("minimal page", minimal)):
        cuts = statistics.quantiles(latencies, n=100)
        rows[name] = {
            "requests_per_second": len(latencies) / args.seconds,
            "p50_ms": cuts[49] * 1000,
            "p99_ms": cuts[98] * 1000,
        }
    print(f"{args.clients} clients on loopback, {args.seconds:g} s each, one server worker")
    for name, row in rows.items():
        print(
            f"{name:24s} {row['requests_per_second']:8,.0f} req/s   "
            f"p50 {row['p50_ms']:6.1f} ms   p99 {row['p99_ms']:6.1f} ms"
        )
    app_row, bare = rows["mini-app page (GET /m)"], rows["minimal page"]
    print(
        f"mini-app / minimal: {app_row['requests_per_second'] / bare['requests_per_second']:.1%} "
        f"of the requests per second, p50 x{app_row['p50_ms'] / bare['p50_ms']:.1f}"
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
