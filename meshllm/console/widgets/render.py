"""Small pure renderers shared by the widgets: meters, sizes, short ids, state glyphs."""

from __future__ import annotations

import re

from rich.text import Text

from meshllm.console.client import NodeInfo, Resources

UNKNOWN = "—"

# Meter colours, btop-like: green while there is room, amber when busy, red when nearly full.
_METER_LOW = "#2f7d4f"
_METER_MID = "#a07a1c"
_METER_HIGH = "#a83a3a"
_METER_EMPTY = "#2b303b"
_METER_STALE = "#4a4f5a"

STATE_STYLE = {
    "ready": "green",
    "starting": "yellow",
    "fetching": "cyan",
    "failed": "bold red",
}
STATE_GLYPH = {"ready": "●", "starting": "◐", "fetching": "↓", "failed": "✖"}
HIGHLIGHT_STYLE = "bold #ffffff on #6a3d9a"
"""The model picked in the chat, where the nodes table shows it."""
ROLE_STYLE = {"host": "bold green", "worker": "cyan", "client": "grey62"}


def short_id(node_id: str, width: int = 7) -> str:
    """The first characters of a node id, enough to tell nodes apart on screen."""
    return node_id[:width]


def fit(text: str, width: int) -> str:
    """`text` cut to `width` cells with an ellipsis."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


_LOG_INTRO = re.compile(r"[;:,.]?\s*last log lines:?\s*$", re.IGNORECASE)
NO_CAUSE = "no cause given"


def cause_summary(cause: str | None) -> str:
    """The first line of a failure's cause, without its 'last log lines:' lead-in.

    'SIGILL while loading, 3 starts in a row; last log lines:\n…' →
    'SIGILL while loading, 3 starts in a row'.
    """
    first = (cause or "").strip().split("\n", 1)[0]
    return _LOG_INTRO.sub("", first).strip() or NO_CAUSE


def cause_log_lines(cause: str | None) -> list[str]:
    """The log lines of a failure's cause (the lines after its first), blank ones left out."""
    return [line.rstrip() for line in (cause or "").strip().splitlines()[1:] if line.strip()]


def human_bytes(n: int | None) -> str:
    """1536 → '1.5 KiB', 253_000_000 → '241 MiB'; None → '—'."""
    if n is None:
        return UNKNOWN
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" and size < 10 else f"{size:.0f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_pair(used: int, total: int) -> str:
    """'45.7/85.9 GiB': two sizes in the unit of the larger."""
    unit = human_bytes(total).split()[-1]
    scale = 1024 ** ("B", "KiB", "MiB", "GiB", "TiB").index(unit)
    fmt = "{:.0f}" if unit == "B" else "{:.1f}"
    return f"{fmt.format(used / scale)}/{fmt.format(total / scale)} {unit}"


def meter(
    fraction: float | None, width: int, label: str | None = None, *, stale: bool = False
) -> Text:
    """A bar `width` cells wide whose filled part is `fraction`, with the percentage on it.

    None draws the unknown mark instead of a bar, so a missing figure never looks like 0 %.
    A `stale` figure (the last one heard, old) is drawn grey: never mistaken for a live one.
    """
    if fraction is None:
        return Text((label or UNKNOWN).center(width), style="grey50")
    fraction = min(max(fraction, 0.0), 1.0)
    text = (label if label is not None else f"{fraction * 100:.0f}%").center(width)[:width]
    filled = round(fraction * width)
    if fraction > 0 and filled == 0:
        filled = 1
    colour = _METER_LOW if fraction < 0.6 else _METER_MID if fraction < 0.85 else _METER_HIGH
    bar = Text(text, style=f"{'grey62' if stale else '#e8e8e8'} on {_METER_EMPTY}")
    bar.stylize(f"#c0c0c0 on {_METER_STALE}" if stale else f"bold #ffffff on {colour}", 0, filled)
    return bar


RESOURCE_STYLE = {"live": "green", "stale": "bold yellow", "unknown": "grey62"}


def resources_mark(state: str, age_s: float | None) -> Text:
    """'● live', '◌ stale (12 s)' or '? unknown': how fresh a node's figures are."""
    if state == "live":
        return Text("● live", style=RESOURCE_STYLE["live"])
    if state == "stale":
        age = f" ({age_s:.0f} s)" if age_s is not None else ""
        return Text(f"◌ stale{age}", style=RESOURCE_STYLE["stale"])
    return Text("? unknown", style=RESOURCE_STYLE["unknown"])


def cpu_fraction(res: Resources | None) -> float | None:
    """CPU use in [0, 1], None when unknown."""
    return None if res is None else res.cpu_percent / 100.0


def ram_fraction(res: Resources | None) -> float | None:
    """RAM use in [0, 1], None when unknown."""
    if res is None or res.ram_total <= 0:
        return None
    return res.ram_used / res.ram_total


def vram_meter(res: Resources | None, width: int, *, stale: bool = False) -> Text:
    """VRAM use over all GPUs: a meter, 'no GPU' when the node has none, '—' when unknown.

    A CPU-only node's memory for models is RAM: the RAM meter shows it, never this one.
    """
    if res is None:
        return meter(None, width)
    total = sum(g.vram_total for g in res.gpus)
    if not res.gpus or total <= 0:
        return Text(fit("no GPU", width).center(width), style="grey42")
    return meter(sum(g.vram_used for g in res.gpus) / total, width, stale=stale)


def health(node: NodeInfo, width: int) -> Text:
    """'self' for this node; for a peer a dot (alive) and its round-trip time."""
    if node.is_self:
        return Text(fit("self", width), style="bold cyan")
    # Listed peers are alive by definition (dead ones leave /api/status); one not heard
    # from for a couple of probe intervals (15 s each, DESIGN §5) is flagged amber.
    stale = node.last_seen_s is not None and node.last_seen_s > 30
    dot = ("● ", "yellow" if stale else "green")
    if node.rtt_ms is None:
        rtt = "alive"
    elif node.rtt_ms < 10:
        rtt = f"{node.rtt_ms:.1f}ms"
    else:
        rtt = f"{node.rtt_ms:.0f}ms"
    return Text.assemble(dot, fit(rtt, width - 2))


def serving(node: NodeInfo, width: int, highlight: str | None = None) -> Text:
    """The models a node serves, each with its state glyph; `highlight` stands out."""
    if not node.serving:
        return Text(UNKNOWN if node.role != "client" else "", style="grey50")
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, (model, state) in enumerate(sorted(node.serving.items())):
        if i:
            out.append(" ")
        out.append(STATE_GLYPH.get(state, "?") + " ", style=STATE_STYLE.get(state, ""))
        out.append(model, style=HIGHLIGHT_STYLE if model == highlight else "")
    out.truncate(width, overflow="ellipsis")
    return out
