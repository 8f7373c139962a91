"""Fusion of several rankings into one: pure functions, no I/O."""

from __future__ import annotations

import math


def reciprocal_rank_fusion(
    rankings: dict[str, list[str]], weights: dict[str, float] | None = None, k: int = 60
) -> list[tuple[str, float]]:
    """Weighted RRF: score(d) = sum_r w_r / (k + rank_r(d)), ranks from 1.

    ``rankings`` maps a retriever name to its ids, best first. Ties keep the order in
    which ids were first seen, so the result is deterministic.
    """
    weights = weights or {}
    scores: dict[str, float] = {}
    for name, ids in rankings.items():
        w = weights.get(name, 1.0)
        if w <= 0:
            continue
        for rank, pid in enumerate(ids, start=1):
            scores[pid] = scores.get(pid, 0.0) + w / (k + rank)
    order = {pid: i for i, pid in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def zscores(scores: list[float]) -> tuple[list[float], float]:
    """Standard scores of one retriever's candidate scores, and the floor: the z of its
    lowest candidate, which is what a passage outside its candidates gets. Scores that do
    not vary (or a single candidate) all get 0."""
    if not scores:
        return [], 0.0
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    if std <= 1e-12 * max(1.0, abs(mean)):
        return [0.0] * len(scores), 0.0
    z = [(s - mean) / std for s in scores]
    return z, min(z)


def zscore_fusion(
    runs: dict[str, list[tuple[str, float]]], weights: dict[str, float] | None = None,
    sharpness: float = 0.0,
) -> list[tuple[str, float, dict[str, float]]]:
    """Score-based fusion: each retriever's scores become z-scores over its own candidates,
    and a passage's fused score is their weighted mean, or with ``sharpness`` b > 0 their
    weighted soft maximum, log(sum_r w_r exp(b z_r)) / b (weights summing to 1): between
    the mean (b -> 0) and the best z (b -> inf), so that one retriever that is sure of a
    passage that the others miss (a paraphrase only the dense model matches) is not
    averaged away.

    ``runs`` maps a retriever name to its candidates as (id, score), higher is better,
    computed over the same depth for every retriever (its top n, zeros included). A
    passage missing from a run gets that run's floor (its lowest candidate's z): outside
    the top n, it is at best as good as the n-th. Unlike RRF, a retriever that is sure
    (one passage far above the rest) weighs more than one whose scores are flat, and the
    fused score is on a scale that a relevance threshold can use: "how many standard
    deviations above the other candidates". Returns (id, fused, {run: z}) best first;
    ties keep the order in which ids were first seen.
    """
    weights = weights or {}
    active = {name: run for name, run in runs.items() if weights.get(name, 1.0) > 0 and run}
    total = sum(weights.get(name, 1.0) for name in active)
    if not total:
        return []
    per_run: dict[str, tuple[dict[str, float], float]] = {}
    order: dict[str, int] = {}
    for name, run in active.items():
        z, floor = zscores([s for _, s in run])
        per_run[name] = ({pid: zi for (pid, _), zi in zip(run, z)}, floor)
        for pid, _ in run:
            order.setdefault(pid, len(order))
    out = []
    for pid in order:
        parts = {name: z.get(pid, floor) for name, (z, floor) in per_run.items()}
        if sharpness > 0:
            fused = math.log(sum(weights.get(name, 1.0) / total * math.exp(sharpness * z)
                                 for name, z in parts.items())) / sharpness
        else:
            fused = sum(weights.get(name, 1.0) * parts[name] for name in parts) / total
        out.append((pid, fused, parts))
    out.sort(key=lambda item: (-item[1], order[item[0]]))
    return out


def guarantee(order: list[str], required: list[str], within: int) -> list[str]:
    """``order`` with every id of ``required`` among its first ``within`` places: one that
    is further down (or absent) moves up to the last of those places, pushing the others
    down by one. The ids already inside keep their order; ``required`` beyond ``within``
    is cut to ``within``."""
    required = [pid for pid in dict.fromkeys(required)][:within]
    head = order[:within]
    for pid in required:
        if pid in head:
            continue
        if len(head) >= within:  # full: the last id that is not itself required makes room
            i = max(i for i, other in enumerate(head) if other not in required)
            del head[i]
        head.append(pid)
    head_set = set(head)
    return head + [pid for pid in order if pid not in head_set]
