"""The image's HEALTHCHECK (podman, Docker): healthy when the container's payorch process
is alive and can do its work.

- `payorch intake`: its own /healthz answers 200 (the port it listens on, from
  PAYORCH_INTAKE__PORT as the intake reads it).
- `payorch run STAGE...` and anything else: PID 1 is payorch, neither a zombie nor
  stopped, and the data directory (PAYORCH_DATA_DIR, a volume) exists and is writable.

The EKS and ECS manifests carry their own probes (deploy/generator/); this one is for a
container started by hand or by the test suite. Standard library only, no payorch import,
so a check costs a few milliseconds of CPU.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    try:
        argv = open("/proc/1/cmdline", "rb").read().split(b"\0")
        state = open("/proc/1/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError as exc:
        print(f"unhealthy: cannot read PID 1: {exc}")
        return 1
    if not any(arg.endswith(b"payorch") for arg in argv) or state in "ZTt":
        print(f"unhealthy: PID 1 is {argv[:3]} in state {state}")
        return 1
    if b"intake" in argv:
        port = os.environ.get("PAYORCH_INTAKE__PORT", "8080")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:  # nosec B310
                return 0 if answer.status == 200 else 1
        except OSError as exc:
            print(f"unhealthy: the intake's /healthz on port {port}: {exc}")
            return 1
    data_dir = os.environ.get("PAYORCH_DATA_DIR", "/var/lib/payorch")
    if not (os.path.isdir(data_dir) and os.access(data_dir, os.W_OK)):
        print(f"unhealthy: the data directory {data_dir} is missing or not writable")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
