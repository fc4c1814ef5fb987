"""Stand-in ``kind``, ``docker``, ``kubectl`` and ``bun`` executables for the environment tests.

Nothing here can start Docker, so the tests put small Python scripts with these
names first (and alone) on PATH. Each records its arguments in ``calls.jsonl`` and
behaves as files in its directory say:

- ``clusters.json``: the kind clusters that "exist" (a JSON list of names);
- ``fail_create``: how many ``kind create cluster`` calls fail (each failure still
  leaves the cluster half-made, as kind does);
- ``hang_create``: a FIFO; ``kind create`` writes its pid and its child's pid into it,
  then hangs (to test that cancellation kills both);
- ``fail_delete``, ``docker_down``: make those commands fail;
- ``docker_images``: the images in the local Docker (``kind load docker-image`` finds them);
- ``source-kubeconfig``: what ``kind create`` copies to its ``--kubeconfig`` path.

``bun`` reads ``STANDIN_MODE`` from its environment: ``silent`` (never answers),
``die`` (exits at once), ``healthy`` (serves /api/health), ``stubborn`` (serves it and
ignores SIGTERM).
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = r"""
import json, os, pathlib, signal, subprocess, sys, time

HERE = pathlib.Path(__file__).resolve().parent
TOOL = pathlib.Path(sys.argv[0]).name
ARGS = sys.argv[1:]
with open(HERE / "calls.jsonl", "a") as f:
    f.write(json.dumps([TOOL, *ARGS]) + "\n")


def clusters():
    path = HERE / "clusters.json"
    return json.loads(path.read_text()) if path.exists() else []


def save(names):
    (HERE / "clusters.json").write_text(json.dumps(sorted(set(names))))


def option(name):
    return ARGS[ARGS.index(name) + 1] if name in ARGS else None


def take(name):
    path = HERE / name
    if not path.exists():
        return False
    left = int(path.read_text() or "0")
    if left <= 0:
        return False
    path.write_text(str(left - 1))
    return True


def serve_health(port):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            code = 200 if self.path == "/api/health" else 404
            body = b'{"status":"healthy"}'
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    print(f"listening on {port}", flush=True)
    HTTPServer(("127.0.0.1", port), Health).serve_forever()


if TOOL == "docker":
    if (HERE / "docker_down").exists():
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
              "Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    print("Server Version: stand-in")
elif TOOL == "kind":
    if ARGS[:2] == ["get", "clusters"]:
        names = clusters()
        print("\n".join(names)) if names else print("No kind clusters found.", file=sys.stderr)
    elif ARGS[:2] == ["get", "kubeconfig"]:
        print((HERE / "source-kubeconfig").read_text())
    elif ARGS[:2] == ["create", "cluster"]:
        name = option("--name")
        print(f"Creating cluster {name!r} ...", file=sys.stderr)
        save(clusters() + [name])
        fifo = HERE / "hang_create"
        if fifo.exists():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            with open(fifo, "w") as f:
                f.write(f"{os.getpid()} {child.pid}")
            time.sleep(600)
        if take("fail_create"):
            print("ERROR: failed to create cluster: could not find a log line that matches "
                  "\"Reached target .*Multi-User System.*\"", file=sys.stderr)
            sys.exit(1)
        target = pathlib.Path(option("--kubeconfig"))
        target.write_text((HERE / "source-kubeconfig").read_text())
        print(f"Set kubectl context to \"kind-{name}\"", file=sys.stderr)
    elif ARGS[:2] == ["load", "docker-image"]:
        images = HERE / "docker_images"
        if ARGS[2] not in (images.read_text().split() if images.exists() else []):
            print(f"ERROR: image: \"{ARGS[2]}\" not present locally", file=sys.stderr)
            sys.exit(1)
        if option("--name") not in clusters():
            print(f"ERROR: no nodes found for cluster \"{option('--name')}\"", file=sys.stderr)
            sys.exit(1)
        print(f"Image: \"{ARGS[2]}\" with ID \"sha256:0\" not yet present on node "
              f"\"{option('--name')}-control-plane\", loading...")
    elif ARGS[:2] == ["delete", "cluster"]:
        if (HERE / "fail_delete").exists():
            print("ERROR: failed to delete cluster: docker rm failed", file=sys.stderr)
            sys.exit(1)
        print(f"Deleting cluster {option('--name')!r} ...", file=sys.stderr)
        save([n for n in clusters() if n != option("--name")])
    else:
        print(f"stand-in kind: unexpected {ARGS}", file=sys.stderr)
        sys.exit(64)
elif TOOL == "kubectl":
    print("NAME STATUS (stand-in)")
elif TOOL == "bun":
    mode = os.environ.get("STANDIN_MODE", "silent")
    port = int(os.environ["PORT"])
    print(f"bun {' '.join(ARGS)} PORT={port} KUBECONFIG={os.environ.get('KUBECONFIG')}", flush=True)
    if mode == "die":
        print("error: Cannot find package 'hono' from 'src/index.ts'", flush=True)
        print("Did you run bun install?", flush=True)
        sys.exit(1)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
    if mode in ("healthy", "stubborn"):
        serve_health(port)
    while True:
        signal.pause()
"""


@dataclass
class Standins:
    """The stand-ins' directory (alone on PATH) and what they recorded."""

    bin: Path

    def calls(self, tool: str | None = None) -> list[list[str]]:
        path = self.bin / "calls.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [row for row in rows if tool is None or row[0] == tool]

    def commands(self, tool: str) -> list[str]:
        """Each call of ``tool`` as its first two arguments, e.g. ``"create cluster"``."""
        return [" ".join(row[1:3]) for row in self.calls(tool)]

    def set(self, name: str, value: str = "") -> None:
        (self.bin / name).write_text(value)

    def existing(self, *names: str) -> None:
        self.set("clusters.json", json.dumps(list(names)))

    def clusters(self) -> list[str]:
        path = self.bin / "clusters.json"
        return json.loads(path.read_text()) if path.exists() else []

    def remove(self, tool: str) -> None:
        (self.bin / tool).unlink()


def install_standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Standins:
    """Write the stand-ins and make their directory the whole PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kind", "docker", "kubectl", "bun"):
        path = bin_dir / tool
        path.write_text(f"#!{sys.executable}\n{SCRIPT}")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return Standins(bin_dir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
