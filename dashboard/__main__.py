"""``python -m dashboard --outputs DIR --host 127.0.0.1 --port 8501``: start the Streamlit server."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def command(outputs: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.maxUploadSize", "25",
            # A research dashboard, not a Streamlit project: no Deploy button, no developer menu
            # (rerun, clear cache); the viewer's menu (print, theme) stays.
            "--client.toolbarMode", "viewer",
            "--", "--outputs", str(outputs)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=Path, default=Path(os.environ.get("ALL_OUTPUTS", "outputs")),
                        help="outputs folder to show (default: $ALL_OUTPUTS or outputs/)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8501)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The engine's one error path (engine.errors.run_cli): a folder it cannot read is one line, exit status 4."""
    from engine.errors import run_cli

    return run_cli(_main, list(sys.argv[1:] if argv is None else argv), "starting the dashboard")


def check_outputs(outputs: Path) -> None:
    """The outputs folder must be readable (it may be missing: the dashboard then says how to fill it)."""
    from engine.errors import resource_error

    try:
        if outputs.exists():
            os.listdir(outputs)
    except OSError as exc:
        raise resource_error(exc, "starting the dashboard",
                             "nothing was started: give a folder you may read with --outputs") from None


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    outputs = args.outputs.expanduser().resolve()
    check_outputs(outputs)
    env = {**os.environ, "ALL_OUTPUTS": str(outputs), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    print(f"dashboard: http://{args.host}:{args.port}  (outputs: {outputs})", flush=True)
    cmd = command(outputs, args.host, args.port)
    # Replace this process by the server, so that stopping the launcher stops the server.
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
