"""The buckets and cluster stages' units (what they write: :mod:`data_prep.stages`)."""

from __future__ import annotations

import time

import numpy as np

from data_prep import rejected as rj
from data_prep import stages
from data_prep.plan import Plan
from megadepth.common.io import atomic_write_array

__all__ = ["run_buckets", "run_cluster"]

_U64 = 1 << 64


def run_buckets(plan: Plan, unit: str) -> dict:
    t0 = time.perf_counter()
    k = int(unit[1:4])
    p = int(unit.split("-p")[1])
    parts = plan.config.dedup.partitions
    lo = np.uint64(p * _U64 // parts)
    hi = None if p == parts - 1 else np.uint64((p + 1) * _U64 // parts)
    offsets = stages.offsets(plan)
    sd = plan.stage_dir("extract") / "sig"
    all_keys, all_ids = [], []
    for i, u in enumerate(plan.units("extract")):
        if offsets[i + 1] == offsets[i]:
            continue
        keys = np.load(sd / f"{u}.keys.npy", mmap_mode="r")[k]
        docs = np.load(sd / f"{u}.docs.npy", mmap_mode="r")[k]
        a = int(np.searchsorted(keys, lo, side="left"))
        b = len(keys) if hi is None else int(np.searchsorted(keys, hi, side="left"))
        if b > a:
            all_keys.append(np.array(keys[a:b]))
            all_ids.append(docs[a:b].astype(np.int64) + offsets[i])
    edges = np.zeros((0, 2), dtype=np.int64)
    if all_keys:
        keys = np.concatenate(all_keys)
        ids = np.concatenate(all_ids)
        order = np.lexsort((ids, keys))
        keys, ids = keys[order], ids[order]
        same = keys[1:] == keys[:-1]
        if same.any():
            # each run of equal keys: link every member to the run's first (smallest id) member
            starts = np.concatenate(([True], ~same))
            run_first = ids[np.maximum.accumulate(np.where(starts, np.arange(len(ids)), 0))]
            member = ~starts
            edges = np.stack([run_first[member], ids[member]], axis=1)
    atomic_write_array(plan.stage_dir("buckets") / "edges" / f"{unit}.npy", edges)
    return {"edges": int(len(edges)), "seconds": round(time.perf_counter() - t0, 4)}


def run_cluster(plan: Plan, unit: str) -> dict:
    from data_prep.minhash import union_find_roots

    t0 = time.perf_counter()
    bands = plan.config.dedup.bands
    exact, fuzzy = [], []
    for u in plan.units("buckets"):
        e = np.load(plan.stage_dir("buckets") / "edges" / f"{u}.npy")
        (exact if int(u[1:4]) == bands else fuzzy).append(e)
    ex, fz = (np.concatenate(e) if e else np.zeros((0, 2), dtype=np.int64) for e in (exact, fuzzy))
    nodes = np.unique(np.concatenate([ex.ravel(), fz.ravel()]))
    n = len(nodes)
    ex_c = np.searchsorted(nodes, ex)
    fz_c = np.searchsorted(nodes, fz)
    own = np.arange(n)
    roots_exact = union_find_roots(n, ex_c[:, 0], ex_c[:, 1])
    n_exact = int((roots_exact != own).sum())
    both = np.concatenate([ex_c, fz_c])
    roots = union_find_roots(n, both[:, 0], both[:, 1])
    removed = nodes[roots != own]
    clusters = int(len(np.unique(roots[roots != own])))
    out = plan.stage_dir("cluster") / "removed.npy"
    rj.save_duplicates(out.parent, nodes, own, roots_exact, roots)
    atomic_write_array(out, np.sort(removed).astype(np.int64))
    return {"exact_duplicates": n_exact, "near_duplicates": int(len(removed)) - n_exact, "removed": int(len(removed)),
            "clusters": clusters, "edges": {"exact": int(len(ex)), "minhash": int(len(fz))},
            "seconds": round(time.perf_counter() - t0, 4)}

