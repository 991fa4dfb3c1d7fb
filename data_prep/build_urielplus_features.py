"""Build trainer/languages/urielplus_features.csv from URIEL+ (Khan et al. 2025), as the subset study used it.

    pip install urielplus                      # only to rebuild; the CSV ships with the trainer
    python -m data_prep.build_urielplus_features [--out trainer/languages/urielplus_features.csv]

What the CSV holds, per NLLB-200 language URIEL+ knows: its typological vector (syntax, phonology,
inventory, morphology features; 452 columns) after URIEL+ integrates its added databases
(updated SAPHON, BDPROTO, Grambank, Glottolog; eWAVE and APiCS are left out as URIEL+'s own
documentation advises: they add hundreds of features for few languages) and aggregates the sources by
union ('U': the maximum of the known values, so a feature any source marks present is 1).
No imputation: a missing value is an empty cell, and a distance is taken over the features two
languages both have.

Codes follow the study's lists: a language is looked up by its FLORES code's own ISO 639-3 code
first (`gaz` for Oromo, `swh` for Swahili, `arb`, `zsm`, ...), then its macrolanguage's (for a
macrolanguage URIEL+ does not list, its most-spoken member: `zho` -> `cmn`, `est` -> `ekk`), and URIEL+'s
Glottocode for that ISO code is the row (URIEL+ identifies languages by Glottocode once its
databases are integrated).

URIEL+ writes into its own package folder (it copies its data files there on first use). So that
the installed package stays untouched, the extraction runs in a child process that imports a
temporary copy of the package.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "trainer" / "languages" / "urielplus_features.csv"
DATABASES = ("UPDATED_SAPHON", "BDPROTO", "GRAMBANK", "GLOTTOLOG")
# NLLB codes that are ISO 639-3 macrolanguages URIEL+ does not list: their most-spoken member stands in.
MEMBER_OF_MACROLANGUAGE = {"zho": "cmn", "est": "ekk", "grn": "gug", "kon": "kng", "srd": "sro"}


def extract(out_json: Path) -> None:
    """In the child process: integrate URIEL+'s databases, union-aggregate, write every table language's vector."""
    from urielplus import urielplus

    from trainer.languages.table import language_table

    u = urielplus.URIELPlus()
    u.set_aggregation("U")
    u.integrate_custom_databases(*DATABASES)
    with open(Path(u.cur_dir) / "database" / "urielplus_csvs" / "uriel_glottocode_map.csv", newline="") as f:
        glotto = {row["iso_code"]: row["glottocode"] for row in csv.DictReader(f)}
    known = set(u.get_typological_languages_array().tolist())
    rows, missing = {}, []
    for lang in language_table():
        candidates = [lang.iso639_3, lang.macrolanguage, MEMBER_OF_MACROLANGUAGE.get(lang.iso639_3)]
        found = next(((iso, glotto[iso]) for iso in candidates if iso and glotto.get(iso) in known), None)
        if found is None:
            missing.append(lang.flores)
            continue
        rows[lang.flores] = found
    vectors = u.get_featural_vector([code for _, code in rows.values()])
    out_json.write_text(json.dumps({
        "features": u.get_typological_features_array().tolist(),
        "rows": {flores: [iso, code, vectors[code]] for flores, (iso, code) in rows.items()},
        "missing": missing}))


def build(out: Path) -> dict:
    """Run the extraction on a temporary copy of the installed urielplus package and write the CSV."""
    spec = importlib.util.find_spec("urielplus")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("urielplus is not installed: pip install urielplus (only needed to rebuild the CSV)")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(Path(list(spec.submodule_search_locations)[0]), Path(tmp) / "urielplus")
        result = Path(tmp) / "vectors.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-m", "data_prep.build_urielplus_features", "--extract", str(result)],
                       env=env, check=True)
        data = json.loads(result.read_text())
    with out.open("w", encoding="utf-8", newline="") as f:
        f.write(f"# URIEL+ typological features, union over sources ({', '.join(DATABASES)} integrated), no "
                f"imputation; built by python -m data_prep.build_urielplus_features\n")
        f.write(f"# not in URIEL+: {' '.join(data['missing'])}\n")
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["flores", "iso639_3", "glottocode", *data["features"]])
        for flores in sorted(data["rows"]):
            iso, code, vector = data["rows"][flores]
            writer.writerow([flores, iso, code, *("" if v < 0 else str(int(v)) for v in vector)])
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--extract", type=Path, help=argparse.SUPPRESS)   # the child process's job
    args = parser.parse_args(argv)
    if args.extract:
        extract(args.extract)
        return
    data = build(args.out)
    print(f"{args.out}: {len(data['rows'])} languages x {len(data['features'])} features; "
          f"{len(data['missing'])} NLLB languages not in URIEL+")


if __name__ == "__main__":
    main()
