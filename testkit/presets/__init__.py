"""Presets that stand for a user's own layout in tests (not shipped with the packages)."""

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def shared_data(name: str, checkout: Path = CHECKOUT) -> Path:
    """``../shared/data/<name>`` beside the checkout; in a git worktree (``.git`` is a file naming
    ``<main>/.git/worktrees/<tree>``) also beside the main checkout. The first that exists, else the first."""
    candidates = [checkout.parent / "shared" / "data" / name]
    git = checkout / ".git"
    if git.is_file():
        text = git.read_text(errors="replace").strip()
        if text.startswith("gitdir:"):
            main = Path(text.removeprefix("gitdir:").strip()).parents[2]
            candidates.append(main.parent / "shared" / "data" / name)
    return next((c for c in candidates if c.exists()), candidates[0])


FLIGHTS = Path(__file__).with_name("flights.toml")
FLIGHTS_DATA = shared_data("flights-us-2004.csv")
