"""Generate the per-stage deployment files from the product's own list of stages.

    .venv/bin/python deploy/generate.py          # write the generated files
    .venv/bin/python deploy/generate.py --check  # exit 1 if a committed file is stale

The generator is deploy/generator/ (common.py: stages, topics, IAM, health checks;
ecs.py: the ECS stack; k8s.py: the EKS Pod Identity stack and the Kustomize base). Its
docstrings say why each choice is made; tests/deploy/test_generated.py runs --check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generator import generated_files  # noqa: E402
from generator.common import ROOT  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description="generate the per-stage deployment files")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args()
    stale = []
    for path, text in generated_files().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale generated files (run .venv/bin/python deploy/generate.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
