"""The playground's one colour scale, for the vector pictures and the similarity heat map.

A diverging scale over [-1, 1] (ColorBrewer's RdBu, safe for the common colour-vision
deficiencies): blue below zero, near-white at zero, red above. Cell text is dark or white,
whichever contrasts more with the cell.
"""

from __future__ import annotations

import itertools

# (position in [-1, 1], RGB)
STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (-1.0, (0x21, 0x66, 0xAC)),
    (-0.5, (0x67, 0xA9, 0xCF)),
    (0.0, (0xF7, 0xF7, 0xF7)),
    (0.5, (0xEF, 0x8A, 0x62)),
    (1.0, (0xB2, 0x18, 0x2B)),
)
DARK_TEXT = "#201f1e"
LIGHT_TEXT = "#ffffff"


def _rgb(value: float) -> tuple[int, int, int]:
    value = min(1.0, max(-1.0, value))
    for (low, low_rgb), (high, high_rgb) in itertools.pairwise(STOPS):
        if value <= high:
            t = (value - low) / (high - low)
            return tuple(round(a + (b - a) * t) for a, b in zip(low_rgb, high_rgb, strict=True))  # type: ignore[return-value]
    return STOPS[-1][1]


def colour(value: float) -> str:
    """The scale's colour for ``value`` (clamped to [-1, 1]) as ``#rrggbb``."""
    r, g, b = _rgb(value)
    return f"#{r:02x}{g:02x}{b:02x}"


def _luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG relative luminance."""
    channels = [c / 255 for c in rgb]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_colour(value: float) -> str:
    """Dark or white text, whichever has the higher contrast on ``colour(value)``."""
    lum = _luminance(_rgb(value))
    dark = _luminance((0x20, 0x1F, 0x1E))
    on_dark_text = (lum + 0.05) / (dark + 0.05)
    on_white_text = 1.05 / (lum + 0.05)
    return DARK_TEXT if on_dark_text >= on_white_text else LIGHT_TEXT


def gradient() -> str:
    """A CSS ``linear-gradient`` of the scale from -1 (left) to 1 (right), for legends."""
    stops = ", ".join(f"{colour(pos)} {(pos + 1) * 50:g}%" for pos, _ in STOPS)
    return f"linear-gradient(to right, {stops})"
