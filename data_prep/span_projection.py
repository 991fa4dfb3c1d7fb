"""Answer spans through machine translation: wrap the span in markers, translate, find the markers again.

METHODS.md ("Machine translation for data"): for extractive QA, enclose answer spans in marker tokens
before translating and recover them after; drop examples whose markers are lost. The markers are
square brackets by default, as in EasyProject (Chen et al. 2023), which NLLB copies through
translation in most sentences:

    mark_span("He lives in Paris now.", 12, "Paris")     # 'He lives in [Paris] now.'
    recover_span("Il habite à [Paris] maintenant.")        # Span(context='Il habite à Paris maintenant.',
                                                           #      start=12, text='Paris')
    span_problem("Il habite à Paris maintenant.")          # 'lost'  (recover_span gives None)
    span_problem("[Il] habite à [Paris].")                 # 'duplicated'

A translation is usable when it holds exactly one opening and one closing marker, in that order,
around a non-empty span. Whitespace just inside the markers is moved outside the span, and a space
doubled by removing a marker is kept single, so `context[start:start + len(text)] == text` always holds.
"""

from __future__ import annotations

from dataclasses import dataclass

MARKERS = ("[", "]")
PROBLEMS = ("lost", "duplicated", "reversed", "empty")   # the reasons a translation is dropped, as counted


@dataclass(frozen=True)
class Span:
    """A context without markers and its answer span: `context[start:start + len(text)] == text`."""

    context: str
    start: int
    text: str


def mark_span(context: str, start: int, text: str, markers: tuple[str, str] = MARKERS) -> str:
    """`context` with `text` (found at character `start`) wrapped in the opening and closing marker.

    Raises ValueError when `context[start:start + len(text)]` is not `text` or the span is empty, and
    when the context already holds a marker (the translation could not be read back unambiguously).
    """
    if not text or context[start:start + len(text)] != text:
        raise ValueError(f"answer {text!r} is not at character {start} of the context "
                         f"(found {context[start:start + len(text)]!r})")
    if any(marker in context for marker in markers):
        raise ValueError(f"the context already holds a marker {markers}")
    return f"{context[:start]}{markers[0]}{text}{markers[1]}{context[start + len(text):]}"


def span_problem(translated: str, markers: tuple[str, str] = MARKERS) -> str | None:
    """Why the markers of a translation cannot be read back (one of PROBLEMS), or None when they can."""
    opened, closed = translated.count(markers[0]), translated.count(markers[1])
    if opened == 0 or closed == 0:
        return "lost"
    if opened > 1 or closed > 1:
        return "duplicated"
    start, end = translated.index(markers[0]), translated.index(markers[1])
    if end < start:
        return "reversed"
    if not translated[start + len(markers[0]):end].strip():
        return "empty"
    return None


def recover_span(translated: str, markers: tuple[str, str] = MARKERS) -> Span | None:
    """The translated context without markers and the span they enclosed; None when `span_problem` finds one."""
    if span_problem(translated, markers) is not None:
        return None
    open_at = translated.index(markers[0])
    close_at = translated.index(markers[1])
    before, inner, after = translated[:open_at], translated[open_at + len(markers[0]):close_at], \
        translated[close_at + len(markers[1]):]
    text = inner.strip()
    lead, trail = inner[:len(inner) - len(inner.lstrip())], inner[len(inner.rstrip()):]
    if before[-1:].isspace():
        lead = ""            # "in [ Paris ]" -> "in Paris": the space before the marker is enough
    if after[:1].isspace() or not after:
        trail = ""
    context = before + lead + text + trail + after
    return Span(context, len(before) + len(lead), text)


__all__ = ["MARKERS", "PROBLEMS", "Span", "mark_span", "recover_span", "span_problem"]
