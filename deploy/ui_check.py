"""Browser check of the Prefect UI as a chemist sees it: a tiny campaign, then its artifacts in headless Chromium.

What it does, with the product's own commands:
1. starts ``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME (nothing shared is touched);
2. submits a water pool and runs a two-round HF/STO-3G campaign with ``sapis pool submit`` and
   ``sapis campaign start`` against that server, in a private SAPIS_HOME (or, with ``--skip-campaign``, uses
   the artifacts already on a server given by ``--api-url``);
3. finds the campaign's overview artifact and the last round's summary through the Prefect API, opens each
   artifact page in headless Chromium (Debian package ``chromium``), checks the rendered page holds the expected
   headings and every plot (inlined PNG images that decode), and saves screenshots.

Exit code 0 when every check passes, 1 otherwise; a JSON report lands next to the screenshots.

    python deploy/ui_check.py --out deploy/screenshots            # ~5-10 min on 2 busy cores
    python deploy/ui_check.py --skip-campaign --api-url http://127.0.0.1:4200/api --out /tmp/shots
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

WATER = """3
Properties=species:S:1:pos:R:3
O 0.000 0.000 0.119
H 0.000 0.763 -0.477
H 0.000 -0.763 -0.477
"""

CAMPAIGN = """
name = "{name}"
pools = ["water"]
seed = 1

[level]
method = "HF"
basis = "sto-3g"
density_fit = false

[explore]
explorers = ["xtb", "committee"]
temperatures = [300.0, 900.0]
steps = 60
interval = 5
perturbations = 0

[model]
size = "S"
knobs = {{ channels = 8, layers = 1, lmax = 1, heads = 2 }}
members = 2
max_epochs = 25
max_minutes = 0.25
nve_steps = 50
batch_size = 4

[select]
seed_size = 8
test_size = 6
k = 6

[label]
workers = 1
timeout_minutes = 10

[targets]
force_mae = 20.0
max_rounds = {rounds}
"""

# what each page must show: headings, and at least this many plots
EXPECT = {
    "overview": (["Campaign", "Rounds", "Learning curve, all rounds"], 1),
    "round": (["round", "Learning curve", "Force parity", "Energy parity"], 3),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(api: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"prefect server at {api} not healthy after {timeout:.0f} s")


def start_server(work: Path) -> tuple[subprocess.Popen, str]:
    """``prefect server start`` on a free local port with its own PREFECT_HOME; returns (process, api url)."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api,  # the browser's API (the UI defaults to port 4200)
    }
    env.pop("PREFECT_API_URL", None)
    log = open(work / "prefect-server.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait_healthy(api, proc)
    return proc, api


def run_campaign(work: Path, api: str, name: str, rounds: int) -> None:
    """Submit the water pool and run the campaign with the sapis CLI against the server at ``api``."""
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(work / "prefect-client"),
        "SAPIS_HOME": str(work / "sapis"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("SAPIS_DATABASE_URL", None)
    (work / "water.xyz").write_text(WATER)
    (work / "campaign.toml").write_text(CAMPAIGN.format(name=name, rounds=rounds))
    sapis = str(BIN / "sapis")
    for cmd in (
        [sapis, "pool", "submit", str(work / "water.xyz"), "--name", "water"],
        [sapis, "campaign", "start", str(work / "campaign.toml")],
    ):
        t0 = time.time()
        res = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
        (work / "campaign.log").open("a").write(f"$ {' '.join(cmd)}\n{res.stdout}\n{res.stderr}\n")
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:3])} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
        print(f"{' '.join(cmd[1:3])}: {time.time() - t0:.0f} s", flush=True)


def find_artifacts(api: str) -> dict[str, dict[str, Any]]:
    """The latest campaign overview and the latest round summary on the server (by key pattern)."""
    import httpx

    res = httpx.post(f"{api}/artifacts/latest/filter", json={"limit": 200}, timeout=30)
    res.raise_for_status()
    found: dict[str, dict[str, Any]] = {}
    for a in sorted(res.json(), key=lambda a: a.get("updated") or ""):
        key = a.get("key") or ""
        if re.fullmatch(r"campaign-[0-9a-f]{8}-\d+-overview", key):
            found["overview"] = a
        elif re.fullmatch(r"campaign-[0-9a-f]{8}-\d+-round-\d+", key) and (
            "round" not in found or _round_no(key) >= _round_no(found["round"]["key"])
        ):
            found["round"] = a
    return found


def _round_no(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("no Chromium found: apt-get install -y chromium")


def _browser(args: list[str], url: str, timeout: float = 180.0) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=25000"]
    return subprocess.run(
        [_chromium(), *flags, *args, url], capture_output=True, text=True, timeout=timeout, check=False
    )


def check_page(url: str, kind: str, shot: Path, width: int = 1280, height: int = 2600) -> dict[str, Any]:
    """Render ``url``; check the headings and the plots; save a screenshot; return what was found."""
    dom = _browser(["--dump-dom"], url).stdout
    headings, min_plots = EXPECT[kind]
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', dom)
    decoded = 0
    for b64 in images:
        try:
            from PIL import Image

            Image.open(io.BytesIO(base64.b64decode(b64))).verify()
            decoded += 1
        except Exception:  # a broken image counts as missing
            pass
    text = re.sub(r"<[^>]+>", " ", dom)
    missing = [h for h in headings if h not in text]
    _browser([f"--screenshot={shot}", f"--window-size={width},{height}"], url)
    small = _shrink(shot)
    return {
        "url": url,
        "plots_found": decoded,
        "plots_expected_at_least": min_plots,
        "headings_missing": missing,
        "screenshot": str(small),
        "ok": decoded >= min_plots and not missing and small.exists(),
    }


def _shrink(path: Path, width: int = 900) -> Path:
    """A small PNG for the README: trimmed of blank space at the bottom, scaled to ``width``, fewer colours."""
    from PIL import Image, ImageChops

    if not path.exists():
        return path
    img = Image.open(path).convert("RGB")
    bg = Image.new("RGB", img.size, img.getpixel((img.width - 1, img.height - 1)))
    box = ImageChops.difference(img, bg).getbbox()
    if box:
        img = img.crop((0, 0, img.width, min(img.height, box[3] + 20)))
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=128).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "deploy" / "screenshots", help="screenshots and report")
    p.add_argument("--rounds", type=int, default=2, help="campaign rounds (2: a round with calibration)")
    p.add_argument("--skip-campaign", action="store_true", help="use the artifacts already on --api-url")
    p.add_argument("--api-url", help="an existing Prefect server's API (with --skip-campaign)")
    p.add_argument("--keep", action="store_true", help="keep the working directory (server log, store)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sapis-ui-check-"))
    server = None
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pages": {}}
    try:
        if args.skip_campaign:
            if not args.api_url:
                p.error("--skip-campaign needs --api-url")
            api = args.api_url.rstrip("/")
        else:
            server, api = start_server(work)
            run_campaign(work, api, "ui-check", args.rounds)
        ui = api.removesuffix("/api")
        found = find_artifacts(api)
        for kind in ("overview", "round"):
            art = found.get(kind)
            if art is None:
                report["pages"][kind] = {"ok": False, "error": f"no {kind} artifact on {api}"}
                continue
            url = f"{ui}/artifacts/artifact/{art.get('latest_id') or art['id']}"
            report["pages"][kind] = {"key": art["key"], **check_page(url, kind, args.out / f"ui-{kind}.png")}
    except Exception as exc:  # the report says what failed; the exit code says that it failed
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            report["workdir"] = str(work)
    ok = "error" not in report and all(p.get("ok") for p in report["pages"].values()) and len(report["pages"]) == 2
    report["ok"] = ok
    (args.out / "ui_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
