"""Plain functions used as tools by the inline ``capitals`` suite of suite.yaml."""

from tools_env.tools import ToolError

CAPITALS = {"Oskaria": "Velport", "Lumeria": "Dunhold", "Tarnland": "Quillby", "Brevia": "Saltmere"}


def capital_of(country: str) -> str:
    """The capital city of a country.

    Args:
        country: the country's name
    """
    if country not in CAPITALS:
        raise ToolError(f"unknown country {country!r}")
    return CAPITALS[country]


def remember(state: dict, note: str) -> str:
    """Write a note into the session's notebook (a tool whose first parameter is `state` gets the session state).

    Args:
        note: what to remember
    """
    state.setdefault("notes", []).append(note)
    return f"noted ({len(state['notes'])} notes)"
