"""Author-year labels for the bibliography page ("Ren et al. 2020", not "[RCZ+20]").

A Sphinx extension loaded through ``_config.yml`` (``sphinx.local_extensions``): it registers the
pybtex formatting style ``authoryear`` (pybtex's ``unsrt`` entries, sorted by author and year,
labelled by surname(s) and year; "a", "b", ... tell apart one author's papers of one year).
"""

from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _surname(person) -> str:
    """Von part and last name as plain text (LaTeX decoded: ``Ku{\\v c}era`` → Kučera)."""
    return " ".join(t.render_as("text") for t in person.rich_prelast_names + person.rich_last_names)


def _clean(text: str) -> str:
    return text.replace("{", "").replace("}", "")


def author_year(entry) -> str:
    """``Surname Year``, ``A and B Year`` or ``A et al. Year`` (editors or the key otherwise)."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_clean(_surname(p)) for p in people]
    if not names:
        who = _clean(entry.fields.get("organization", entry.key))
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who} {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels ``Ren et al. 2020``; duplicates get ``a``, ``b``, ... in sorted order."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year(e) for e in entries]
        totals = Counter(labels)
        seen: Counter = Counter()
        for label in labels:
            if totals[label] > 1:
                seen[label] += 1
                yield f"{label}{chr(ord('a') + seen[label] - 1)}"
            else:
                yield label


class AuthorYearStyle(UnsrtStyle):
    """pybtex's ``unsrt`` formatting with author-year labels, sorted by author, year, title."""

    default_label_style = AuthorYearLabelStyle
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
