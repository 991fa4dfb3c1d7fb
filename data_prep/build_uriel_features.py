"""Build trainer/languages/uriel_features.csv from the URIEL data shipped in `lang2vec`.

    pip install --no-deps lang2vec          # only needed to rebuild; not a runtime dependency
    python -m data_prep.build_uriel_features [--lang2vec-data DIR] [--out trainer/languages/uriel_features.csv]

Reads two of lang2vec's data files directly with numpy (the `lang2vec` module
itself needs `pkg_resources` and is never imported):

- `feature_averages.npz`: observed URIEL typological features (syntax `S_*`,
  phonology `P_*`, inventory `INV_*`; 289 features), averaged over the sources
  that have them (WALS, SSWL, Ethnologue, PHOIBLE...). lang2vec's
  `syntax_average + phonology_average + inventory_average`. Missing = -1.
- `feature_predictions.npz`: the same 289 features with every gap filled by
  lang2vec's k-nearest-neighbour predictions (`*_knn` feature sets).

For each NLLB-200 language of the package's language table, the URIEL code is
the candidate with the most observed features among its ISO 639-3 code and
its 3-letter aliases, i.e. the macrolanguage codes for which it is the default
member (URIEL files most data on Arabic under `ara`, Oromo under `orm`, Malay
under `msa`, which carry more data than `arb`, `gaz`, `zsm`). Other members of
a macrolanguage (Arabic dialects, Banjar, ...) keep their own code's data. Two rows per language are written: `observed` (empty cell =
missing) and `knn`. Languages absent from URIEL are listed in the header.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np

from trainer.languages.table import language_table

PREFIXES = ("S_", "P_", "INV_")
DATA_IN_DIST = "lang2vec/data/feature_averages.npz"   # a file of the distribution, next to the others
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "trainer" / "languages" / "uriel_features.csv"


def find_lang2vec_data() -> Path:
    """The `data` folder of the installed lang2vec distribution, found through its package metadata.

    Not through the import system: lang2vec also installs a script `bin/lang2vec.py`, and when
    pytest runs as a console script the environment's `bin/` comes first on `sys.path`, so
    `find_spec("lang2vec")` finds that script instead of the package.
    """
    try:
        dist = importlib.metadata.distribution("lang2vec")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError("lang2vec is not installed: pip install --no-deps lang2vec, "
                                "or pass --lang2vec-data DIR (the folder with feature_averages.npz)") from None
    data = Path(dist.locate_file(DATA_IN_DIST)).parent
    if not (data / "feature_averages.npz").is_file():
        raise FileNotFoundError(f"lang2vec {dist.version} has no {DATA_IN_DIST} at {data}; "
                                f"pass --lang2vec-data DIR (the folder with feature_averages.npz)")
    return data


def _fmt(x: float) -> str:
    if x < 0:
        return ""
    if x == int(x):
        return str(int(x))
    return f"{x:.4f}".rstrip("0")


def build(data_dir: Path, out: Path) -> dict[str, str]:
    """Write the feature CSV; returns {flores: uriel_code} for the languages written."""
    avg = np.load(data_dir / "feature_averages.npz")
    knn = np.load(data_dir / "feature_predictions.npz")
    feats = [str(f) for f in avg["feats"]]
    if [str(f) for f in knn["feats"]] != feats or list(knn["langs"]) != list(avg["langs"]):
        raise ValueError(f"{data_dir}: feature_averages.npz and feature_predictions.npz disagree on axes")
    keep = [i for i, f in enumerate(feats) if f.startswith(PREFIXES)]
    index = {str(c): i for i, c in enumerate(avg["langs"])}
    observed = avg["data"][:, keep, 0]
    predicted = knn["data"][:, keep, 0]

    chosen: dict[str, str] = {}
    absent: list[str] = []
    for lang in language_table():
        cands = [lang.iso639_3] + [a for a in lang.aliases if len(a) == 3]
        cands = [c for c in dict.fromkeys(cands) if c in index]
        if not cands:
            absent.append(lang.flores)
            continue
        chosen[lang.flores] = max(cands, key=lambda c: (int((observed[index[c]] >= 0).sum()), -cands.index(c)))

    digest = hashlib.sha256()
    for name in ("feature_averages.npz", "feature_predictions.npz"):
        digest.update((data_dir / name).read_bytes())
    lines = [
        "# URIEL typological features (syntax S_, phonology P_, inventory INV_) for the NLLB-200 languages.",
        "# Built by: python -m data_prep.build_uriel_features (from lang2vec's feature_averages.npz and",
        "# feature_predictions.npz; sha256 of both files: " + digest.hexdigest()[:16] + ").",
        "# kind=observed: URIEL values averaged over sources, empty = missing; kind=knn: lang2vec kNN predictions.",
        "# absent from URIEL: " + (" ".join(absent) or "none"),
        ",".join(["flores", "uriel_code", "kind"] + [feats[i] for i in keep]),
    ]
    for flores, code in sorted(chosen.items()):
        i = index[code]
        lines.append(",".join([flores, code, "observed"] + [_fmt(float(x)) for x in observed[i]]))
        lines.append(",".join([flores, code, "knn"] + [_fmt(float(x)) for x in predicted[i]]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang2vec-data", type=Path, default=None,
                        help="lang2vec's data folder (default: the installed package's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output CSV")
    args = parser.parse_args(argv)
    chosen = build(args.lang2vec_data or find_lang2vec_data(), args.out)
    print(f"wrote {len(chosen)} languages to {args.out}")


if __name__ == "__main__":
    main()
