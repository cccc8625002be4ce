"""The multi-stage golden pipeline (RecPipe): stage 1 scores all N candidates
of a query and keeps the best ``keep[0]``, stage 2 re-ranks those and keeps
``keep[1]``, ... the last stage's ``keep`` is the final list (best first).

Selection between stages is the top-k filter's (:mod:`host.topk`): score
descending, equal scores by the lower id first, where the id is the
candidate's position in the query's original list (:attr:`Query.positions`,
kept through the stages), so the result does not depend on the order in
which survivors arrive. A quantized stage scores in integers
(:attr:`QuantizedStageModel.score`: the last layer's accumulator plus bias)
and :func:`host.topk.topk` selects bit for bit as the hardware; a float
stage selects by the same rule on its float scores. Each stage ranks by its
own scores only.

Precisions: ``"float"`` (the float model), ``"int8"`` (int8 MLPs, 8-bit
row-wise embeddings), ``"int4"`` (int8 MLPs, 4-bit row-wise embeddings);
:func:`build_scorers` makes them from the same float weights.

MACs per query of a pipeline: ``sum over stages of per_query + n_s *
per_candidate`` (:meth:`StageModelConfig.macs`, user/item split), ``n_s``
the candidates entering stage ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .metrics import hit_at_k, ndcg_single, rank_of, recall_at_k, recpipe_ndcg_at_k
from .models import (Query, StageModel, StageModelConfig, StageModelParams,
                     quantize_stage_model)
from .topk import topk

__all__ = ["PRECISIONS", "PipelineSpec", "PipelineResult", "select_top",
           "run_pipeline", "pipeline_macs", "build_scorers", "QualityRow",
           "evaluate_pipeline", "quality_table"]

PRECISIONS = ("float", "int8", "int4")


@dataclass(frozen=True)
class PipelineSpec:
    """Stages by model name, and how many candidates each keeps (the last:
    the final list's length)."""

    name: str
    stages: tuple[str, ...]
    keep: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "keep", tuple(self.keep))
        if not self.stages or len(self.stages) != len(self.keep):
            raise ValueError(f"pipeline {self.name!r}: {len(self.stages)} stages and "
                             f"{len(self.keep)} keep counts (one each, at least one)")
        for k in self.keep:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"pipeline {self.name!r}: keep counts must be positive "
                                 f"integers, not {k!r}")


@dataclass(frozen=True, eq=False)
class PipelineResult:
    """The final list, best first: ``positions`` (top-k ids), ``candidates``
    (what they are), ``scores`` (the last stage's); ``survivors`` the
    positions each stage kept; ``macs`` the query's MACs."""

    positions: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    survivors: tuple[np.ndarray, ...]
    macs: int


def select_top(scores, positions, k: int) -> np.ndarray:
    """Indices (into ``scores``) of the best ``min(k, n)``, best first, by the
    top-k filter's rule: score descending, then lower position first.
    Integer scores go through :func:`host.topk.topk`. ``positions`` must be
    unique (they are within a query)."""
    scores = np.asarray(scores)
    positions = np.asarray(positions, dtype=np.int64)
    if np.issubdtype(scores.dtype, np.integer):
        _, kept = topk(scores, positions, k)
        # positions are unique within a query: map them back to indices.
        order = np.argsort(positions, kind="stable")
        return order[np.searchsorted(positions[order], kept)]
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores: a float score is not finite")
    return np.lexsort((positions, -scores))[:k]


def run_pipeline(spec: PipelineSpec, scorers: Mapping[str, object], query: Query) -> PipelineResult:
    """Run one query through the stages of ``spec``.

    ``scorers`` maps each stage name to a :class:`host.models.StageModel`
    or :class:`host.models.QuantizedStageModel` (anything with ``config``
    and ``scores(query)``).
    """
    if np.unique(query.positions).size != query.positions.size:
        raise ValueError("query: candidate positions must be unique")
    q, macs, survivors = query, 0, []
    scores = np.zeros(0)
    for name, keep in zip(spec.stages, spec.keep):
        try:
            scorer = scorers[name]
        except KeyError:
            raise ValueError(f"pipeline {spec.name!r}: no model {name!r} (have "
                             f"{sorted(scorers)})") from None
        s = scorer.scores(q)
        macs += scorer.config.macs().total(q.n_candidates)
        idx = select_top(s, q.positions, keep)
        q, scores = q.subset(idx), s[idx]
        survivors.append(q.positions.copy())
    return PipelineResult(q.positions, q.candidates, scores, tuple(survivors), macs)


def pipeline_macs(spec: PipelineSpec, configs: Mapping[str, StageModelConfig],
                  n_candidates: int) -> int:
    """MACs of one query of ``n_candidates`` (module docstring)."""
    total, n = 0, n_candidates
    for name, keep in zip(spec.stages, spec.keep):
        total += configs[name].macs().total(n)
        n = min(n, keep)
    return total


def build_scorers(params: Mapping[str, StageModelParams], calibration: Sequence[Query],
                  precisions: Sequence[str] = PRECISIONS, **quant_args) -> dict[str, dict]:
    """``{precision: {model name: scorer}}`` from float weights; the quantized
    ones are calibrated on ``calibration`` (extra keyword arguments go to
    :func:`host.models.quantize_stage_model`)."""
    out = {}
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"precision: {p!r} is not one of {PRECISIONS}")
        if p == "float":
            out[p] = {n: StageModel(v) for n, v in params.items()}
        else:
            bits = 8 if p == "int8" else 4
            out[p] = {n: quantize_stage_model(v, calibration, emb_bits=bits, **quant_args)
                      for n, v in params.items()}
    return out


@dataclass(frozen=True)
class QualityRow:
    """Quality and cost of one pipeline at one precision, means over queries.

    ``ndcg`` is the standard NDCG@k and ``ndcg_recpipe`` RecPipe's variant
    (:mod:`host.metrics`), both with the held-out positive as the only
    relevant item; ``hr`` is HR@k; ``recall`` the share of the reference's
    top k in the pipeline's top k (``None`` without a reference).
    """

    pipeline: str
    precision: str
    k: int
    queries: int
    ndcg: float | None
    ndcg_recpipe: float | None
    hr: float | None
    recall: float | None
    macs_per_query: float

    def as_dict(self) -> dict:
        k = self.k
        return {"pipeline": self.pipeline, "precision": self.precision,
                f"ndcg{k}": self.ndcg, f"ndcg{k}_recpipe": self.ndcg_recpipe,
                f"hr{k}": self.hr, f"recall{k}": self.recall,
                "macs_per_query": self.macs_per_query, "queries": self.queries}


def evaluate_pipeline(spec: PipelineSpec, scorers: Mapping[str, object],
                      queries: Sequence[Query], positives=None, k: int = 10,
                      reference: PipelineSpec | Sequence[np.ndarray] | None = None,
                      precision: str = "") -> QualityRow:
    """Run ``queries`` through ``spec`` and average the metrics.

    Parameters
    ----------
    positives : int array, optional
        Each query's held-out positive (a ``Query.candidates`` value); without
        them NDCG and HR are ``None``.
    k : int
        The cut-off of every metric.
    reference : PipelineSpec or list of position arrays, optional
        Usually the large model alone over all candidates (run with the
        same ``scorers``), or its final positions per query, already
        computed; the recall of its top ``k`` is reported.
    precision : str
        A label for the row.
    """
    if isinstance(reference, PipelineSpec):
        reference = [run_pipeline(reference, scorers, q).positions for q in queries]
    nd, ndr, hr, rec, macs = [], [], [], [], []
    for j, q in enumerate(queries):
        res = run_pipeline(spec, scorers, q)
        macs.append(res.macs)
        if positives is not None:
            r = rank_of(res.candidates, positives[j])
            nd.append(ndcg_single(r, k))
            ndr.append(recpipe_ndcg_at_k(res.candidates[:k] == positives[j], k))
            hr.append(hit_at_k(res.candidates, positives[j], k))
        if reference is not None:
            rec.append(recall_at_k(res.positions, reference[j], k))

    def mean(v):
        return float(np.mean(v)) if v else None

    return QualityRow(spec.name, precision, k, len(queries), mean(nd), mean(ndr), mean(hr),
                      mean(rec), float(np.mean(macs)) if macs else 0.0)


def quality_table(specs: Sequence[PipelineSpec], scorers: Mapping[str, Mapping[str, object]],
                  queries: Sequence[Query], positives=None, k: int = 10,
                  reference: PipelineSpec | None = None) -> list[QualityRow]:
    """Every pipeline at every precision of ``scorers`` (as
    :func:`build_scorers` returns them), side by side; the reference is run
    once per precision, with that precision's scorers."""
    refs = {p: None if reference is None else
            [run_pipeline(reference, scorers[p], q).positions for q in queries]
            for p in scorers}
    return [evaluate_pipeline(s, scorers[p], queries, positives, k, refs[p], p)
            for s in specs for p in scorers]
