"""What `jobs/demo_stage2.yaml` starts from, made when missing: the stage-1 MT-LLM and the fine-tuned teacher.

    python -m data_prep.demo_stage2_inputs     # runs jobs/demo_stage1.yaml and jobs/demo_finetune.yaml
                                               # unless outputs/demo_stage1/export and
                                               # outputs/demo_finetune/export exist

Each is an ordinary run of `python -m trainer.train`; an existing export is kept (safe to repeat).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

JOBS = {"jobs/demo_stage1.yaml": "outputs/demo_stage1/export", "jobs/demo_finetune.yaml": "outputs/demo_finetune/export"}


def main() -> int:
    for job, export in JOBS.items():
        if (Path(export) / "trainable.safetensors").is_file():
            print(f"{export}: exists, kept")
            continue
        print(f"{export}: missing, running python -m trainer.train {job}", flush=True)
        code = subprocess.run([sys.executable, "-m", "trainer.train", job]).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
