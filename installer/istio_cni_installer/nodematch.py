"""Would this DaemonSet (still) schedule a pod on this node? Pure functions over API objects.

Mirrors the scheduler rules a DaemonSet pod is subject to: ``nodeSelector`` (all labels equal),
required node affinity (any term matches; within a term every expression/field matches) and
taints with effect NoSchedule/NoExecute (each must be tolerated). Returns the first reason it
would not, or None.
"""

from __future__ import annotations


def _expr_ok(expr: dict, values_of: dict) -> bool:
    key, op, vals = expr.get("key"), expr.get("operator"), expr.get("values") or []
    present = key in values_of
    val = values_of.get(key)
    if op == "In":
        return present and val in vals
    if op == "NotIn":
        return not present or val not in vals
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt"):
        if val is None:  # no such label: nothing to compare
            return False
        try:
            a, b = int(val), int(vals[0])
        except (TypeError, ValueError, IndexError):
            return False
        return a > b if op == "Gt" else a < b
    return False


def _term_ok(term: dict, labels: dict, fields: dict) -> bool:
    exprs, fexprs = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not exprs and not fexprs:
        return False  # an empty term matches nothing (scheduler semantics)
    return all(_expr_ok(e, labels) for e in exprs) and all(_expr_ok(e, fields) for e in fexprs)


def _tolerated(taint: dict, tolerations: list) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        op = t.get("operator") or "Equal"
        if op == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if op == "Equal" and t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def mismatch(daemonset: dict, node: dict) -> str | None:
    spec = ((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}
    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    fields = {"metadata.name": meta.get("name")}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return f"nodeSelector {k}={v} does not match node label {k}={labels.get(k)!r}"
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    if terms is not None and not any(_term_ok(t, labels, fields) for t in terms):
        return "required node affinity no longer matches this node"
    tolerations = spec.get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(taint, tolerations):
            return f"taint {taint.get('key')}={taint.get('value', '')}:{taint.get('effect')} not tolerated"
    return None
