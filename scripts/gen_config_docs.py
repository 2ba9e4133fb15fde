"""Writes docs/configuration.md, the settings reference of the three services, from their config dataclasses."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from funnel.serving.config import reference_markdown
from gateway.config import GatewayServiceConfig
from ranking_service.config import RankingServiceConfig
from retrieval_service.config import RetrievalServiceConfig

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "configuration.md"
COMMAND = ".venv/bin/python scripts/gen_config_docs.py"
CLASSES = (GatewayServiceConfig, RetrievalServiceConfig, RankingServiceConfig)

INTRO = f"""\
# Configuration reference

Generated from the services' config dataclasses by `{COMMAND}`; do not edit
by hand (`tests/unit/test_docs.py` fails when this file is out of date).

Each service is its own process. It reads its settings from command-line flags, then environment variables,
then defaults: a flag wins over its variable, and an empty variable counts as unset. A required setting that is
missing stops the service with a message naming its variable. Each command takes `--help`.

```bash
.venv/bin/python -m retrieval_service --artifact-root var/artifacts --address 127.0.0.1:50052
.venv/bin/python -m ranking_service   --artifact-root var/artifacts --address 127.0.0.1:50053
.venv/bin/python -m gateway           --artifact-root var/artifacts --address 127.0.0.1:50051 \\
    --retrieval-target 127.0.0.1:50052 --ranking-target 127.0.0.1:50053
```

`make up` starts all three like this, on these ports. The trainer's options are in
[rollout.md](rollout.md#the-trainer-job), the dataset cache (`FUNNEL_CACHE_DIR`) in
[data.md](data.md#the-cache-directory).
"""


def render() -> str:
    """The whole of docs/configuration.md."""
    return INTRO + "\n" + reference_markdown(CLASSES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report whether the file is up to date (exit 1)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        fresh = OUTPUT.is_file() and OUTPUT.read_text(encoding="utf-8") == text
        print(f"{OUTPUT.relative_to(ROOT)} is {'up to date' if fresh else f'out of date: run {COMMAND}'}")
        return 0 if fresh else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
