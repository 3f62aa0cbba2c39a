"""Does `edgeface threshold` hold its FMR on unseen people? Calibrate on the LFW compression split, measure on
the test identities.

For each artifact and each target FMR:
1. `edgeface threshold COPY --data ../shared/data/lfw --aligned --fmr F` (an LFW root gives its compression
   split: 3,554 identities absent from pairs folds 6-10, 6,922 aligned crops; up to 1,000,000 of their
   23.9 M impostor pairs, seeded);
2. the FMR at that threshold on the *test* identities (every identity of pairs folds 6-10, all their
   aligned112 images): over every impostor pair of those images, and on the 1,500 impostor pairs of the
   LFW test folds themselves (too few to resolve 1e-4, shown for reference), with Wilson 95 % intervals
   over pairs and, for the test identities, the interval with people resampled (their pairs share people:
   George W Bush alone is in 15 % of them), and the FMR counting every pair of people once; FNMR on their
   genuine pairs as well.
3. both for the point estimate (`--confidence 0`) and the default people-level bound (`--confidence 0.95`).

    python benchmarks/threshold_calibration.py /tmp/evalart/art/mobilefacenet_int8.onnx \\
        /tmp/evalart/art/mobilefacenet_int8.tflite --fmr 1e-3 1e-4 --confidence 0 0.95
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"


def pct(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{r['rate'] * 100:.4f} % [{lo * 100:.4f}, {hi * 100:.4f}] ({r['errors']:,}/{r['n']:,})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--fmr", nargs="+", type=float, default=[1e-3, 1e-4])
    ap.add_argument("--confidence", nargs="+", type=float, default=[0.0, 0.95])
    ap.add_argument("--test-impostors", type=int, default=5_000_000, help="cap on test impostor pairs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from edgeface.runtime.backends import load_artifact

    from edgeface.data.lfw import TEST_FOLDS, read_pairs, select_folds, test_identities
    from edgeface.eval.acquire import acquire
    from edgeface.eval.dataset import from_paths, make_pairs
    from edgeface.eval.folder_eval import pair_scores
    from edgeface.eval.rates import fmr_people_interval, rates_at_threshold

    pairs_all = read_pairs(LFW / "pairs.txt")
    ids = test_identities(pairs_all, TEST_FOLDS)
    test_imgs = sorted(p for d in sorted(ids) for p in (LFW / "aligned112" / d).glob("*.jpg"))
    test = from_paths(LFW / "aligned112", test_imgs)
    test_pairs = make_pairs(test.identity, args.test_impostors, seed=0)
    lfw_test = select_folds(pairs_all, TEST_FOLDS)
    index = {p: i for i, p in enumerate(test.images)}
    lfw_idx = np.array(
        [[index[LFW / "aligned112" / p.left], index[LFW / "aligned112" / p.right]] for p in lfw_test]
    )
    lfw_same = np.array([p.same for p in lfw_test])
    print(
        f"test identities: {len(test.names):,}, images {len(test.images):,}, genuine pairs "
        f"{len(test_pairs.genuine):,}, impostor pairs {len(test_pairs.impostor):,} of "
        f"{test_pairs.impostor_possible:,}{' (sampled)' if test_pairs.sampled else ''}"
    )
    rows = []
    for art in args.artifacts:
        art_obj = load_artifact(art, num_threads=args.threads)
        got = acquire(art_obj, test.images, aligned=True, progress=f"test {art.name}")
        assert got.ok.all(), got.failures[:3]
        gen = pair_scores(got.embeddings, test_pairs.genuine)
        imp = pair_scores(got.embeddings, test_pairs.impostor)
        lfw_scores = pair_scores(got.embeddings, lfw_idx)
        test_ids = test.identity[test_pairs.impostor]
        n_img = np.bincount(test.identity)
        pair_w = 1.0 / (n_img[test_ids[:, 0]] * n_img[test_ids[:, 1]])
        for fmr, conf in ((f, c) for f in args.fmr for c in args.confidence):
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / art.name
                shutil.copy(art, copy)
                shutil.copy(str(art) + ".json", str(copy) + ".json")
                cmd = [sys.executable, "-m", "edgeface.cli.main", "threshold", str(copy), "--data", str(LFW),
                       "--aligned", "--fmr", str(fmr), "--confidence", str(conf),
                       "--threads", str(args.threads), "--json"]  # fmt: skip
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(r.stderr[-1000:])
                cal = json.loads(r.stdout)
            t = cal["threshold"]
            on_test = rates_at_threshold(gen, imp, t)
            on_lfw = rates_at_threshold(lfw_scores[lfw_same], lfw_scores[~lfw_same], t)
            on_test["fmr"]["ci95_people"] = fmr_people_interval(imp, test_ids, len(test.names), t, 200)
            on_test["fmr"]["per_pair_of_people"] = float((pair_w * (imp >= t)).sum() / pair_w.sum())
            rows.append((art.name, fmr, cal, on_test, on_lfw))
            print(json.dumps({"artifact": art.name, "fmr": fmr, "threshold": t,
                              "calibration": {k: cal[k] for k in ("impostor_pairs", "false_matches",
                                                                  "fmr_achieved", "genuine_pairs")},
                              "confidence": conf, "test_fmr": on_test["fmr"], "test_fnmr": on_test["fnmr"],
                              "lfw_test_pairs_fmr": on_lfw["fmr"]}))  # fmt: skip
    print()
    print("| artifact | target FMR | --confidence | threshold | calibration: impostors, passing | "
          "FMR on test identities [Wilson 95 % over pairs] | [95 %, people resampled] | "
          "FMR, every pair of people once | "
          "FNMR on test identities | FMR on the 1,500 LFW test impostor pairs |")  # fmt: skip
    print("|---|---:|---:|---:|---|---|---|---:|---|---|")
    for name, fmr, cal, on_test, on_lfw in rows:
        lo, hi = on_test["fmr"]["ci95_people"]
        print(
            f"| {name} | {fmr:g} | {cal['confidence']:g} | {cal['threshold']:.4f} | "
            f"{cal['impostor_pairs']:,}, {cal['false_matches']} | {pct(on_test['fmr'])} | "
            f"[{lo * 100:.4f}, {hi * 100:.4f}] % | "
            f"{on_test['fmr']['per_pair_of_people'] * 100:.4f} % | {pct(on_test['fnmr'])} | "
            f"{pct(on_lfw['fmr'])} |"
        )


if __name__ == "__main__":
    main()
