"""What the attention images (``insight.py``) and ``rrn compare --plot`` (``compare.py``) draw with: Pillow's own
font, text placed, fitted and wrapped, markers, and the colour map of the attention weights.

Pillow rather than matplotlib: matplotlib would add a large dependency and half a second per drawing process for
a grid of coloured cells and a few polylines (the measurement: benchmarks/RESULTS.md, "Drawing: Pillow or
matplotlib").
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["colorize", "fit_text", "font", "marker", "place_text", "vertical_text", "wrap_text"]

# A perceptually ordered map from 0 (dark blue) to 1 (yellow), our own anchors, linearly interpolated.
_COLORS = torch.tensor(
    [[0.05, 0.03, 0.24], [0.16, 0.24, 0.55], [0.12, 0.55, 0.55], [0.43, 0.78, 0.35], [0.98, 0.90, 0.16]]
)


def colorize(values: Tensor) -> Tensor:
    """Values in [0, 1] ``[...]`` -> RGB ``[..., 3]`` uint8 through the colour map."""
    x = values.float().clamp(0, 1) * (len(_COLORS) - 1)
    low = x.floor().long().clamp(max=len(_COLORS) - 2)
    frac = (x - low)[..., None]
    rgb = _COLORS[low] * (1 - frac) + _COLORS[low + 1] * frac
    return (rgb * 255).round().to(torch.uint8)


def font(size: int):
    """Pillow's own font (no font files needed) at ``size`` pixels where this Pillow can scale it (with FreeType),
    else its fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def place_text(draw, text_font, xy: tuple[float, float], text: str, anchor: str, fill=(20, 20, 20)) -> None:
    """``text`` placed by ``anchor`` as Pillow reads it (l/m/r across, t/m down; "mt": centred, top at xy), worked
    out here from the text's ink box, since Pillow's own ``anchor=`` needs a FreeType font."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=text_font)
    x = xy[0] - {"l": x0, "m": (x0 + x1) / 2, "r": x1}[anchor[0]]
    y = xy[1] - {"t": y0, "m": (y0 + y1) / 2}[anchor[1]]
    draw.text((x, y), text, fill=fill, font=text_font)


def vertical_text(image, text_font, centre: tuple[int, int], text: str, fill=(20, 20, 20)) -> None:
    """``text`` turned a quarter left (read bottom to top), centred on ``centre``: an axis title."""
    from PIL import Image, ImageDraw

    _, _, width, height = text_font.getbbox(text)
    label = Image.new("RGBA", (width + 2, height + 2), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((1, 1), text, fill=fill, font=text_font)
    label = label.rotate(90, expand=True)
    image.paste(label, (centre[0] - label.width // 2, centre[1] - label.height // 2), label)


def fit_text(draw, text: str, width: int, text_font) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=text_font) <= width:
        return text
    while text and draw.textlength(text + "...", font=text_font) > width:
        text = text[:-1]
    return text + "..."


def wrap_text(draw, text: str, width: int, text_font) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken at spaces (a word wider than a line is cut)."""
    lines: list[str] = []
    for word in text.split(" "):
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(joined, font=text_font) <= width:
            lines[-1] = joined
        else:
            lines.append(fit_text(draw, word, width, text_font))
    return lines or [""]


def marker(draw, xy: tuple[float, float], shape: str, colour: tuple[int, int, int], r: float = 4) -> None:
    """A marker of ``shape`` (circle, square, triangle, diamond, down, cross) centred on ``xy``, about 2r across,
    white-edged."""
    x, y = xy
    outline = (255, 255, 255)
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=outline)
    elif shape == "square":
        draw.rectangle([x - r + 1, y - r + 1, x + r - 1, y + r - 1], fill=colour, outline=outline)
    elif shape == "cross":
        draw.line([(x - r, y - r), (x + r, y + r)], fill=colour, width=3)
        draw.line([(x - r, y + r), (x + r, y - r)], fill=colour, width=3)
    else:
        corners = {
            "triangle": [(x, y - r - 1), (x + r, y + r - 1), (x - r, y + r - 1)],
            "down": [(x, y + r + 1), (x + r, y - r + 1), (x - r, y - r + 1)],
            "diamond": [(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)],
        }[shape]
        draw.polygon(corners, fill=colour, outline=outline)
