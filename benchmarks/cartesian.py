"""Cartesian-product merging (MicroRec) on published table-size lists.

:func:`cartesian_report` runs the table compiler's merge heuristic
(:func:`host.table_compiler.plan_merges`, MicroRec's: one-hot tables of at
most ``small_rows`` rows, pairs only, the smallest with the largest, within a
storage-growth budget) on the sizes of each list in :data:`TABLE_LISTS`. No
table data is made: the plan needs rows, dim, bits and pooling factor only.
Each list is planned in two storage layouts:

``"dense32"``
    MicroRec's storage model (:class:`DenseLayout`): rows of 32-bit elements
    packed back to back, no header, no padding (32-bit fixed point in its
    artifact, fp32 in the TensorFlow model it was taken from; fp32 is also
    what the Criteo models train in). MicroRec's +3.2% is counted this way.
``"recaccel"``
    this project's hardware rows (:mod:`host.embedding`): int8 codes after an
    8-byte scale/bias header, padded to whole bus beats, rows a power-of-two
    number of beats apart, and a merged row must fit one burst of
    ``max_row_beats`` (:class:`host.table_compiler.BurstLayout` of the
    config; by default the ``microrec-u280`` preset's: 256-bit beats,
    ``max_dim`` 64, so at most 3 beats a row).

Per list and layout the report gives tables before and after, storage in
bytes before and after and the overhead in percent, and lookups (one memory
access each) per item before and after: every feature is one-hot (one id per
item), so an unmerged table costs one lookup per item and a merged pair one
for both.

The MicroRec list and its published result
------------------------------------------
MicroRec's 47-table model is the wide-and-deep model of its authors' public
code (:data:`MICROREC_47`); its dims add up to 352, the input of MicroRec's
352-1024-512-256-1 MLP (PAPERS.md). With :data:`MICROREC_POLICY` the
heuristic takes exactly the pairs of the artifact's "algorithm generated"
47 -> 42 layout, 4 x (100 x 1000 rows) and 2 x (500 x 1000), at +3.16% of
storage (MicroRec's own analysis, which adds the products without removing
the merged tables, gives +3.17%; the paper says +3.2%). That leaves 41
tables; the artifact's 42 counts the 10M-row, 32-wide table twice, split
into two 16-wide halves on its two DDR channels, which is placement, not
merging. ``small_rows = 1000`` is the threshold that reproduces the
artifact's pairs (with the compiler's default 4096 the 3000-row table joins
and pairs with a 100-row one: still 41 tables, at +3.94%); any ``max_growth``
from 3.16% to 5.41% gives the same plan.

In the ``"recaccel"`` layout a 4-wide row takes a whole 32-byte beat and a
merged one two beats, where MicroRec stores 16 and 32 bytes, while the big
tables cost about half as much (int8): a merge costs about 3.9 times as
large a share of the total, a 500 x 1000 pair +4.4% on its own, so the same
policy stops after the four 100 x 1000 pairs (47 -> 43 tables, +3.50%).

MicroRec's 98-table model (98 -> 84, +1.9%) is not reproduced: the public
code keeps its 35 hashed features but not the sizes of its 63 crossed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from host.table_compiler import BurstLayout, MergePolicy, TableShape, plan_merges
from hw.config import Config, EmbeddingConfig

__all__ = ["TableList", "DenseLayout", "MICROREC_47", "CRITEO_KAGGLE", "CRITEO_TERABYTE",
           "TABLE_LISTS", "MICROREC_POLICY", "LAYOUTS", "cartesian_report",
           "format_cartesian"]


@dataclass(frozen=True)
class DenseLayout:
    """Rows packed back to back, ``ceil(dim * bits / 8)`` bytes each, no
    header, no padding, and a lookup may read a row of any length: the
    storage model of MicroRec (a :class:`host.table_compiler.RowLayout`)."""

    unit_bytes: int = 1
    max_row_units: int = 1 << 62

    def row_units(self, dim: int, bits: int) -> int:
        return -(-dim * bits // 8)

    def stride_units(self, row_units: int) -> int:
        return row_units


@dataclass(frozen=True)
class TableList:
    """A published list of embedding tables.

    ``tables`` holds ``(feature, rows, dim)``; every feature is one-hot.
    ``paper_tables_after`` and ``paper_overhead_pct`` are the published
    result of merging, if any.
    """

    name: str
    source: str
    dims: str
    tables: tuple[tuple[str, int, int], ...]
    paper_tables_after: int | None = None
    paper_overhead_pct: float | None = None
    note: str = ""


# MicroRec's 47-table model (PAPERS.md names it, "47 -> 42 tables (+3.2%
# storage)", but does not list it). From the authors' public code,
# github.com/WenqiJiang/FPGA-Accelerator-for-Recommender-Systems:
# keras_wide_deep/conf/feature.yaml (16 hashed features: rows = hash_bucket
# size) and conf/cross_feature.yaml (31 crossed features with is_deep = 1:
# rows = int(1000 * hash_bucket_size) or 10000, python/lib/read_conf.py);
# dim = 2 ** ceil(ln(rows ** 0.25)) (embedding_dim in python/train.py).
# Checks: 47 tables, dims adding up to 352 (the MLP input, also INPUT_SIZE in
# fpgasystems/FPGA-Recommendation-Accelerator
# Alibaba_Models/final_42_embedding_lookup_freq_140/src/constants.hpp),
# 353,669,600 parameters (1.3 GiB of fp32).
MICROREC_47 = TableList(
    name="microrec-47",
    source="MicroRec's 47-table model: WenqiJiang/FPGA-Accelerator-for-Recommender-Systems "
           "keras_wide_deep/conf (PAPERS.md gives the result, not the list)",
    dims="4-32 per table (MicroRec's), 352 in all",
    tables=(
        ("adplan_id", 10000, 8), ("scheduling_id", 10000, 8), ("idea_id", 20000, 8),
        ("province_id", 100, 4), ("city_id", 1000, 4), ("ip_original", 500000, 16),
        ("app_version", 100, 4), ("category", 500, 4), ("u", 10000000, 32),
        ("device_model", 10000, 8), ("article_tag", 500, 4), ("user_cates", 1000, 4),
        ("user_industrys", 1000, 4), ("ad_cates", 1000, 4), ("ad_idea_types", 100, 4),
        ("ucomp", 1000, 4), ("adplan_id&category", 100000, 8), ("category&ucomp", 10000, 8),
        ("scheduling_id&ucomp", 100000, 8), ("category&location&site", 100000, 8),
        ("age&ugender", 100, 4), ("scheduling_id&age", 10000, 8),
        ("site&age&ugender", 1000, 4), ("industry_level2_id&age&ugender", 3000, 8),
        ("scheduling_id&age&ugender", 100000, 8), ("industry_level2_id&ucomp", 10000, 8),
        ("adplan_id&ucomp", 100000, 8), ("adplan_id&category&ucomp", 1000000, 16),
        ("category&scheduling_id", 100000, 8), ("category&industry_level2_id", 10000, 8),
        ("category&network&os", 10000, 8), ("hour&weekdays", 1000, 4),
        ("hour&scheduling_id", 10000, 8), ("hour&industry_level2_id", 10000, 8),
        ("network&os&site", 1000, 4), ("industry_level2_id&site", 1000, 4),
        ("adplan_id&os&site", 100000, 8), ("industry_level2_id&network&os", 10000, 8),
        ("network&os&scheduling_id", 100000, 8),
        ("industry_level2_id&user_industrys", 30000, 8),
        ("industry_level2_id&ip_original", 100000, 8),
        ("city_id&industry_level2_id", 10000, 8), ("idea_type&os&network", 1000, 4),
        ("idea_id&site&category", 100000, 8), ("idea_type&city_id", 10000, 8),
        ("idea_id&province_id", 10000, 8), ("idea_id&device_type&os", 10000, 8),
    ),
    paper_tables_after=42,
    paper_overhead_pct=3.2,
    note="MicroRec's 42 counts the 10M-row table (u, dim 32) twice: its artifact splits "
         "it into two 16-wide halves, one per DDR channel (placement, not merging); its "
         "merges are these six pairs",
)

# Criteo Kaggle, copied from PAPERS.md (MP-Rec, "Kaggle config: dim 16 ...
# table sizes 3 4 10 ... 10131227"), in that (sorted) order.
CRITEO_KAGGLE = TableList(
    name="criteo-kaggle",
    source="PAPERS.md (MP-Rec's Kaggle config)",
    dims="16 (PAPERS.md, MP-Rec's Kaggle config)",
    tables=tuple((f"C{k + 1}", rows, 16) for k, rows in enumerate((
        3, 4, 10, 15, 18, 24, 27, 105, 305, 583, 633, 1460, 2173, 3194, 5652, 5683, 12517,
        14992, 93145, 142572, 286181, 2202608, 5461306, 7046547, 8351593, 10131227))),
)

# Criteo Terabyte: PAPERS.md has no list. This is DLRM's, ids capped at 10M
# (--max-ind-range=10000000), with DLRM's dim for it, 64: facebookresearch/dlrm
# tools/visualize.py (and bench/dlrm_s_criteo_terabyte.sh), in DLRM's
# feature order. (MLPerf's 40M-capped list uses dim 128, wider than the
# microrec-u280 unit's max_dim of 64.)
CRITEO_TERABYTE = TableList(
    name="criteo-terabyte",
    source="facebookresearch/dlrm tools/visualize.py, --max-ind-range=10000000 "
           "(not in PAPERS.md)",
    dims="64 (assumed: DLRM's for this list; PAPERS.md gives none)",
    tables=tuple((f"C{k + 1}", rows, 64) for k, rows in enumerate((
        9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352, 313829,
        10, 2208, 11156, 122, 4, 970, 14, 9994222, 7267859, 9946608, 415421, 12420, 101,
        36))),
)

TABLE_LISTS: dict[str, TableList] = {t.name: t for t in
                                     (MICROREC_47, CRITEO_KAGGLE, CRITEO_TERABYTE)}

#: The policy that reproduces MicroRec's 47-table merges (see the module
#: documentation); the compiler's default differs in ``small_rows`` (4096).
MICROREC_POLICY = MergePolicy(small_rows=1000, max_growth=0.05)

LAYOUTS = ("dense32", "recaccel")


def _embedding_config(cfg) -> EmbeddingConfig:
    if cfg is None:
        return Config.preset("microrec-u280").embedding
    if isinstance(cfg, Config):
        return cfg.embedding
    if isinstance(cfg, EmbeddingConfig):
        return cfg
    raise ValueError(f"cfg: must be an EmbeddingConfig or a Config, not {type(cfg).__name__}")


def _lists(table_lists) -> list[TableList]:
    if table_lists is None:
        return list(TABLE_LISTS.values())
    if isinstance(table_lists, (str, TableList)):
        table_lists = [table_lists]
    elif isinstance(table_lists, Mapping):
        table_lists = list(table_lists.values())
    out = []
    for t in table_lists:
        if isinstance(t, str):
            if t not in TABLE_LISTS:
                raise ValueError(f"table list {t!r}: unknown; known: {', '.join(TABLE_LISTS)}")
            t = TABLE_LISTS[t]
        if not isinstance(t, TableList):
            raise ValueError(f"table list: a name or a TableList, not {t!r}")
        out.append(t)
    return out


def _plan(tl: TableList, layout_name: str, cfg: EmbeddingConfig, policy: MergePolicy) -> dict:
    if layout_name == "dense32":
        layout, bits = DenseLayout(), 32
        precision = "32-bit elements, dense rows (no header, no padding)"
    elif layout_name == "recaccel":
        for feature, _, dim in tl.tables:
            if dim > cfg.max_dim:
                raise ValueError(f"{tl.name}: table {feature!r} has dim {dim}, more than "
                                 f"embedding.max_dim = {cfg.max_dim}")
        layout, bits = BurstLayout(cfg), 8
        precision = (f"int8 + 8-byte header, {cfg.bus_bytes}-byte beats, power-of-two "
                     f"stride, <= {cfg.max_row_beats} beats a burst")
    else:
        raise ValueError(f"layout {layout_name!r}: must be one of {', '.join(LAYOUTS)}")
    shapes = [TableShape(rows, dim, bits, 1.0) for _, rows, dim in tl.tables]
    pairs = plan_merges(shapes, layout, policy)

    unit = layout.unit_bytes
    units = [layout.row_units(s.dim, s.bits) for s in shapes]
    size = [s.rows * layout.stride_units(u) * unit for s, u in zip(shapes, units)]
    before = sum(size)
    after = before
    merges = []
    for a, b in pairs:
        rows = shapes[a].rows * shapes[b].rows
        row_units = units[a] + units[b]
        merged = rows * layout.stride_units(row_units) * unit
        after += merged - size[a] - size[b]
        merges.append({"features": (tl.tables[a][0], tl.tables[b][0]),
                       "rows": (shapes[a].rows, shapes[b].rows), "merged_rows": rows,
                       "row_bytes": row_units * unit, "bytes": merged})
    small = [f for f, s in enumerate(shapes) if s.rows <= policy.small_rows]
    no_room = [f for f in small if units[f] >= layout.max_row_units]
    lookups_before = len(shapes)                 # one-hot: one lookup per table per item
    lookups_after = lookups_before - len(pairs)
    return {
        "list": tl.name, "layout": layout_name, "source": tl.source, "dims": tl.dims,
        "precision": precision,
        "tables_before": len(shapes), "tables_after": len(shapes) - len(pairs),
        "bytes_before": before, "bytes_after": after,
        "overhead_pct": 100.0 * (after - before) / before,
        "lookups_before": lookups_before, "lookups_after": lookups_after,
        "lookups_saved": lookups_before - lookups_after,
        "merges": merges,
        "small_tables": len(small), "small_without_room": len(no_room),
        "limits": {"small_rows": policy.small_rows, "max_growth": policy.max_growth,
                   "max_row_bytes": (layout.max_row_units * unit
                                     if layout_name == "recaccel" else None)},
        "paper_tables_after": tl.paper_tables_after if layout_name == "dense32" else None,
        "paper_overhead_pct": tl.paper_overhead_pct if layout_name == "dense32" else None,
        "note": tl.note if layout_name == "dense32" else "",
    }


def cartesian_report(table_lists: Iterable[str | TableList] | None = None,
                     cfg: EmbeddingConfig | Config | None = None, *,
                     policy: MergePolicy = MICROREC_POLICY,
                     layouts: Iterable[str] = LAYOUTS) -> list[dict]:
    """Plan MicroRec's merges for each table list; see the module documentation.

    Parameters
    ----------
    table_lists : names or TableLists, optional
        Default: every list of :data:`TABLE_LISTS`.
    cfg : EmbeddingConfig or Config, optional
        The unit whose layout ``"recaccel"`` counts in; default the
        ``microrec-u280`` preset's.
    policy : MergePolicy
        Default :data:`MICROREC_POLICY`.
    layouts : names
        Any of :data:`LAYOUTS`.

    Returns
    -------
    list of dict
        One per list and layout: ``list``, ``layout``, ``source``, ``dims``,
        ``precision``, ``tables_before``, ``tables_after``, ``bytes_before``,
        ``bytes_after``, ``overhead_pct``, ``lookups_before``,
        ``lookups_after``, ``lookups_saved`` (per item), ``merges`` (per
        pair: ``features``, ``rows``, ``merged_rows``, ``row_bytes``,
        ``bytes``), ``small_tables`` (of at most ``small_rows`` rows),
        ``small_without_room`` (of those, rows that fill a burst alone),
        ``limits``, the published ``paper_tables_after`` and
        ``paper_overhead_pct`` (None if none), ``note``.
    """
    cfg = _embedding_config(cfg)
    if not isinstance(policy, MergePolicy):
        raise ValueError(f"policy: must be a MergePolicy, not {type(policy).__name__}")
    layouts = list(layouts)
    return [_plan(tl, name, cfg, policy) for tl in _lists(table_lists) for name in layouts]


def format_cartesian(rows: list[dict]) -> str:
    """The report as text: one line per list and layout, then its merges and notes."""
    if not rows:
        return "Cartesian merging: no table lists"
    lim = rows[0]["limits"]
    out = [f"Cartesian-product merging (MicroRec's heuristic: one-hot tables of <= "
           f"{lim['small_rows']} rows, pairs, smallest with largest, storage growth <= "
           f"{100 * lim['max_growth']:g}%); one lookup per table per item"]
    for r in rows:
        line = (f"  {r['list']:<16} {r['layout']:<9} tables {r['tables_before']} -> "
                f"{r['tables_after']}, lookups/item {r['lookups_before']} -> "
                f"{r['lookups_after']} ({r['lookups_saved']} saved), storage "
                f"{r['bytes_before']:,} -> {r['bytes_after']:,} bytes "
                f"({r['overhead_pct']:+.2f}%)")
        if r["paper_tables_after"] is not None:
            line += (f"; published: {r['paper_tables_after']} tables, "
                     f"{r['paper_overhead_pct']:+.1f}%")
        out.append(line)
        out.append(f"      dims {r['dims']}; {r['precision']}")
        if r["merges"]:
            pairs = {}
            for m in r["merges"]:
                key = m["rows"]
                pairs[key] = pairs.get(key, 0) + 1
            out.append("      merged (rows x rows): " + ", ".join(
                f"{n} x ({a} x {b})" for (a, b), n in pairs.items()))
        elif r["small_tables"] and r["small_without_room"] == r["small_tables"]:
            out.append(f"      no merge: every table of <= {lim['small_rows']} rows fills a "
                       f"burst alone ({r['limits']['max_row_bytes']} bytes at most)")
        elif not r["small_tables"]:
            out.append(f"      no merge: no table of <= {lim['small_rows']} rows")
        if r["note"]:
            out.append(f"      note: {r['note']}")
        out.append(f"      source: {r['source']}")
    return "\n".join(out)


if __name__ == "__main__":
    print(format_cartesian(cartesian_report()))
