"""1:N search time against gallery size: random L2-normalised templates in a real SQLite gallery.

    python benchmarks/gallery_search.py [--sizes 1000 10000 100000] [--dim 128] [--queries 200] [--json]

Reports the bulk-enroll time, the time to load the gallery into its search matrix (paid once per process),
and the time per query (matrix-vector product, per-identity max, top-5) as mean and p50/p90/p99.
Random templates are the honest worst case for the top-k selection (no identity dominates).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from edgeface.runtime.gallery import Gallery, ModelTag
from edgeface.runtime.profile import latency_stats

TEMPLATES_PER_IDENTITY = 5


def bench(size: int, dim: int, queries: int, tmp: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tag = ModelTag("random", "fp32", dim, "0" * 64)
    templates = rng.standard_normal((size, dim)).astype(np.float32)
    path = tmp / f"gallery_{size}_{dim}.sqlite"
    with Gallery(path) as g:
        t0 = time.perf_counter()
        g.enroll_many(
            (
                (f"id{i:07d}", templates[i : i + TEMPLATES_PER_IDENTITY], None)
                for i in range(0, size, TEMPLATES_PER_IDENTITY)
            ),
            tag,
        )
        enroll_s = time.perf_counter() - t0
    with Gallery(path, create=False) as g:
        t0 = time.perf_counter()
        g.matrix()
        load_ms = (time.perf_counter() - t0) * 1e3
        q = rng.standard_normal((queries, dim)).astype(np.float32)
        g.identify(q[0], tag, 5)  # warm-up
        ms = []
        for v in q:
            t0 = time.perf_counter()
            g.identify(v, tag, 5)
            ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "templates": size,
        "identities": size // TEMPLATES_PER_IDENTITY,
        "dim": dim,
        "file_mb": path.stat().st_size / 2**20,
        "enroll_s": enroll_s,
        "load_ms": load_ms,
        "query_ms": latency_stats(ms),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="gallery search time vs size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(n, a.dim, a.queries, Path(tmp)) for n in a.sizes]
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        "| templates | identities | dim | file MB | bulk enroll s | load ms | query mean ms "
        "| p50 | p90 | p99 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        q = r["query_ms"]
        print(
            f"| {r['templates']} | {r['identities']} | {r['dim']} | {r['file_mb']:.1f} "
            f"| {r['enroll_s']:.2f} | "
            f"{r['load_ms']:.1f} | {q['mean']:.3f} | {q['p50']:.3f} | {q['p90']:.3f} | {q['p99']:.3f} |"
        )


if __name__ == "__main__":
    main()
