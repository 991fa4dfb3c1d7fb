"""Print every package whose installed version differs from constraints.txt (the lock); exit 1 if any does.

.ci/run calls it right after the README's set-up: it proves the suite runs on the tested versions. torch's local
label (+cpu on the CPU dev machines) is ignored: the lock pins the version, the machine picks the build.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"
pins = {canonicalize_name(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", LOCK.read_text(), re.M)}
installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
differ = [(name, pin, installed[name]) for name, pin in sorted(pins.items())
          if name in installed and installed[name].split("+")[0] != pin]
missing = sorted(name for name in pins if name not in installed)
print(f"constraints.txt: {len(pins)} pins, {len(pins) - len(missing) - len(differ)} installed at the pinned version, "
      f"{len(missing)} not installed here (the gpu extra, the image's driver: {', '.join(missing) or 'none'})")
for name, pin, got in differ:
    print(f"  {name}: installed {got}, constraints.txt {pin}")
sys.exit(1 if differ else 0)
