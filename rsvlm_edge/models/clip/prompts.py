"""Zero-shot prompt templates for remote-sensing scene classification.

Class embeddings are the mean of the L2-normalised text embeddings of every template filled with the
label, normalised again (CLIP's prompt ensembling).
"""

from __future__ import annotations

import string
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


def check_template(template: str) -> str:
    """A template must hold exactly one plain ``{}`` field for the label (``{0}`` also works);
    literal braces are written ``{{`` and ``}}``. Named fields (``{name}``), several fields,
    conversions or format specs (``{!r}``, ``{:>9}``) and unbalanced braces are refused."""
    if not isinstance(template, str):
        raise InputError(f"a template must be a string (got {type(template).__name__})", "e.g. 'a satellite photo of {}.'")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise InputError(f"template {template!r} has unbalanced braces ({e})",
                         "write {} once for the label, and {{ or }} for a literal brace") from None
    if not fields:
        raise InputError(f"template {template!r} has no {{}} field for the label", "e.g. 'a satellite photo of {}.'")
    if len(fields) > 1:
        raise InputError(f"template {template!r} has {len(fields)} fields; it must have exactly one {{}} for the label",
                         "keep one {} (write {{ or }} for a literal brace)")
    name, spec, conv = fields[0]
    if name not in ("", "0"):
        raise InputError(f"template {template!r} has a named field {{{name}}}; the label goes into a plain {{}}",
                         f"write {{}} instead of {{{name}}}")
    if spec or conv:
        raise InputError(f"template {template!r} formats its field ({'!' + conv if conv else ''}{':' + spec if spec else ''})",
                         "use a plain {} for the label")
    return template


def fill_template(template: str, label: str) -> str:
    """``template`` (checked by ``check_template``) with ``label`` in its one field."""
    return template.format(label)


def resolve_templates(templates: str | Sequence[str] | None) -> tuple[str, ...]:
    """A template-set name from ``TEMPLATES``, or one template / a list of templates, each with exactly
    one ``{}`` field for the label (see ``check_template``)."""
    if templates is None:
        templates = DEFAULT_TEMPLATES
    if isinstance(templates, str):
        if templates in TEMPLATES:
            return TEMPLATES[templates]
        if "{" in templates or "}" in templates:
            return (check_template(templates),)
        raise InputError(f"unknown template set '{templates}'",
                         f"use one of {', '.join(TEMPLATES)} or a string containing '{{}}'")
    try:
        out = tuple(templates)
    except TypeError:
        raise InputError(f"templates must be a set name or a list of strings (got {type(templates).__name__})",
                         "e.g. ['a satellite photo of {}.']") from None
    if not out:
        raise InputError("the template list is empty", "e.g. ['a satellite photo of {}.']")
    return tuple(check_template(t) for t in out)


def _normal(label: str) -> str:
    """How the CLIP tokenizer sees a label: whitespace collapsed, lower-cased."""
    return " ".join(label.split()).lower()


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels must be a non-empty list of non-empty strings that the model can tell apart: two labels
    that differ only in case or whitespace tokenise identically (CLIP lower-cases text) and are refused."""
    if isinstance(labels, str):
        labels = [s.strip() for s in labels.split(",")]
    if labels is None:
        labels = []
    out = [str(x).strip() for x in labels]
    if not out:
        raise InputError("the label list is empty", "pass at least two class names, e.g. --labels forest,river,airport")
    empty = [i for i, x in enumerate(out) if not x]
    if empty:
        raise InputError(f"the label list contains an empty or whitespace-only label (position {empty[0] + 1})",
                         "remove the empty entry (check for a trailing comma or a blank line)")
    seen: dict[str, str] = {}
    for x in out:
        key = _normal(x)
        if key in seen:
            same = f"'{x}'" if seen[key] == x else f"'{seen[key]}' and '{x}'"
            raise InputError(f"the label list repeats {same} (labels are compared ignoring case and spacing, "
                             "as the CLIP tokenizer reads them)", "list every class once")
        seen[key] = x
    return out
