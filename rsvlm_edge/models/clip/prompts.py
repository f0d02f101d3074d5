"""Zero-shot prompt templates for remote-sensing scene classification.

Class embeddings are the mean of the L2-normalised text embeddings of every template filled with the
label, normalised again (CLIP's prompt ensembling).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import InputError

_RS_KINDS = ("remote sensing image", "aerial image", "satellite image")
_RS_PATTERNS = (
    "a {kind} of {{}}.",
    "a {kind} of a {{}}.",
    "a {kind} of the {{}}.",
    "a {kind} of many {{}}.",
    "a {kind} containing {{}}.",
    "a {kind} showing {{}}.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    # RemoteCLIP's zero-shot prompt.
    "satellite": ("a satellite photo of {}.",),
    # GeoRSCLIP-style ensemble: patterns x {remote sensing image, aerial image, satellite image}.
    "rs-ensemble": tuple(p.format(kind=k) for k in _RS_KINDS for p in _RS_PATTERNS),
    # No template: the label is the prompt.
    "plain": ("{}",),
}
DEFAULT_TEMPLATES = "satellite"


def resolve_templates(templates: str | Sequence[str] | None) -> tuple[str, ...]:
    """A template-set name from ``TEMPLATES``, or an explicit list of strings each containing '{}'."""
    if templates is None:
        templates = DEFAULT_TEMPLATES
    if isinstance(templates, str):
        if templates in TEMPLATES:
            return TEMPLATES[templates]
        if "{}" in templates:
            return (templates,)
        raise InputError(f"unknown template set '{templates}'",
                         f"use one of {', '.join(TEMPLATES)} or a string containing '{{}}'")
    out = tuple(templates)
    bad = [t for t in out if "{}" not in t]
    if not out or bad:
        raise InputError(f"templates must each contain '{{}}' (got {bad or 'an empty list'})",
                         "e.g. ['a satellite photo of {}.']")
    return out


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels must be a non-empty list of non-empty, distinct strings."""
    if isinstance(labels, str):
        labels = [s.strip() for s in labels.split(",")]
    out = [str(x).strip() for x in labels]
    if not out:
        raise InputError("the label list is empty", "pass at least two class names, e.g. --labels forest,river,airport")
    if any(not x for x in out):
        raise InputError("the label list contains an empty label", "remove the empty entry (check for a trailing comma)")
    dup = sorted({x for x in out if out.count(x) > 1})
    if dup:
        raise InputError(f"the label list repeats {', '.join(dup)}", "list every class once")
    return out
