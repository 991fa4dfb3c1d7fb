"""Run the jobs a demo starts from, each only when its export is missing (safe to repeat).

    python -m data_prep.run_missing jobs/demo_stage1.yaml jobs/demo_finetune.yaml

Each job is an ordinary `python -m trainer.train JOB.yaml` run; a job whose OUTPUT_DIR/export holds
trainable.safetensors is skipped. The stage-2 and FLARE demos name it in their `prepare`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", help="job YAML files, run in order")
    for job in parser.parse_args(argv).jobs:
        if not Path(job).is_file():
            parser.error(f"{job}: no such job file")
        export = Path((yaml.safe_load(Path(job).read_text()) or {}).get("output_dir", "outputs/run")) / "export"
        if (export / "trainable.safetensors").is_file():
            print(f"{export}: exists, kept")
            continue
        print(f"{export}: missing, running python -m trainer.train {job}", flush=True)
        code = subprocess.run([sys.executable, "-m", "trainer.train", job]).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
