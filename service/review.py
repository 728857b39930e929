"""The review worklist: every structure, muscle measurement and load
result that needs a person's look, with its coded reasons.

A result needs review when it carries a flag other than an assumed model
input (`dicom_io.codes.review_flags`); the reasons are the SR's coded
review reasons (`dicom_io.codes.REASON`). One walk over the documented
``measurements.json`` gives the study's worklist entry, so the SR, the PDF
report, the status API (``/api/studies?review=needed``) and the metric
all say the same thing.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from spinegate.dicom_io import codes as sg_codes

__all__ = ["review_fields", "study_review", "result_flags", "REVIEW_FILTERS", "WORKLIST_LEVELS"]

# Values of the status API's ``review`` filter.
REVIEW_FILTERS = ("needed", "none")
# The spine structures a lumbar report is about. Thoracic ones above are
# flagged in their own results (the field of view nearly always cuts one at
# the top) but do not by themselves put a study on the worklist.
WORKLIST_LEVELS = frozenset({"L1", "L2", "L3", "L4", "L5", "S1", "T12L1", "L1L2", "L2L3", "L3L4", "L4L5", "L5S1"})


def review_fields(flags: Sequence[str]) -> dict[str, Any]:
    """``needs_review`` and ``review_reasons`` (``"SG0076 Low model
    confidence"``…) of one result's flags, as measurements.json holds them."""
    review = sg_codes.review_flags(flags)
    return {"needs_review": bool(review),
            "review_reasons": [f"{c.value} {c.meaning}" for c in sg_codes.reason_codes(review)]}


def result_flags(result: Mapping[str, Any], series: Mapping[str, Any]) -> list[str]:
    """A structure's or muscle measurement's flags in ``measurements.json``
    with its series' flags after them (an unverified level naming, …): what
    bears on whether to trust that one value."""
    return list(result["flags"]) + [f for f in series.get("flags", []) if f not in result["flags"]]


def _items(doc: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    for s in doc.get("series", []):
        uid, desc = s["series_instance_uid"], s.get("description", "")
        for m in s.get("structures", []):
            if m["level"] not in WORKLIST_LEVELS:
                continue
            yield {"series_instance_uid": uid, "series": desc, "result": m["label"], "level": m["level"],
                   "flags": result_flags(m, s)}
        for m in s.get("muscles", []):
            yield {"series_instance_uid": uid, "series": desc, "result": f"{m['label']}, {m['level']} level",
                   "level": m["level"], "flags": result_flags(m, s)}
    bio = doc.get("biomechanics") or None
    if bio:
        yield {"series_instance_uid": None, "series": "", "result": "Spinal load model", "level": None,
               "flags": list(bio.get("flags", []))}
        for t in bio.get("tasks", []):
            yield {"series_instance_uid": None, "series": "", "result": f"Spinal loads, {t['description']}",
                   "level": None, "flags": list(t.get("flags", [])) + ([] if t.get("feasible", True)
                                                                       else ["pose_infeasible_muscles_too_weak"])}


def study_review(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The study's worklist entry from its ``measurements.json`` document:
    the lumbar structures (`WORKLIST_LEVELS`), muscle measurements and load
    results that need review.

    Returns
    -------
    dict
        ``needed`` (bool), ``items`` (each result needing review: series,
        result, level, ``review_reasons``, its flags) and ``reasons``
        (coded reason → number of results giving it).
    """
    items = []
    counts: Counter[str] = Counter()
    for item in _items(doc):
        fields = review_fields(item["flags"])
        if not fields["needs_review"]:
            continue
        flags = sg_codes.review_flags(dict.fromkeys(item["flags"]))
        items.append({**item, "flags": flags, "review_reasons": fields["review_reasons"]})
        counts.update(fields["review_reasons"])
    return {"needed": bool(items), "items": items, "reasons": dict(sorted(counts.items()))}
