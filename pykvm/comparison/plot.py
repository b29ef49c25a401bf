"""Startup time and memory side by side, as an SVG written by hand (SVG 1.1, no dependency);
FILE.png is that SVG rasterized by rsvg-convert (write_plot).

    +-------------------------------+  +-------------------------------+
    | startup (s)                   |  | peak RSS (MiB)                |
    |   ##        ##                |  |   ##    ##    ##              |
    |   ## ##     ## ##             |  |   ##    ##    ##              |
    |  first line   exit            |  |   VM  cont.  baseline         |
    +-------------------------------+  +-------------------------------+

Each bar is the median; the whisker spans min to max over the runs.
"""
from __future__ import annotations

import math
from html import escape

from pykvm.errors import ConfigError

__all__ = ["svg", "write_plot"]

PANEL_W, PANEL_H = 360, 260          # one panel, in SVG user units (px)
MARGIN_L, MARGIN_B, MARGIN_T = 50, 40, 30
BAR_W = 34
COLORS = {"vm": "#3b6ea8", "container": "#d9822b", "baseline": "#8c8c8c"}
MIB = 1 << 20


def _nice_max(value: float) -> float:
    """A round axis maximum at or above value: 1, 2, 2.5 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(power * f for f in (1, 2, 2.5, 5, 10) if power * f >= value)


def _panel(x0: int, title: str, unit: str, groups: list[tuple[str, list[tuple[str, dict]]]],
           scale: float) -> list[str]:
    """One bar chart: groups of (side, stats) bars with min-max whiskers, axis 0..max."""
    top = max(stats["max"] for _, bars in groups for _, stats in bars) / scale
    axis = _nice_max(top) or 1.0
    plot_h = PANEL_H - MARGIN_B - MARGIN_T
    y = lambda v: MARGIN_T + plot_h * (1 - v / scale / axis)   # noqa: E731 (value -> y pixel)
    out = [f'<g transform="translate({x0},0)">',
           f'<text x="{MARGIN_L}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{MARGIN_L}" y1="{MARGIN_T}" x2="{MARGIN_L}" y2="{PANEL_H - MARGIN_B}" stroke="black"/>',
           f'<line x1="{MARGIN_L}" y1="{PANEL_H - MARGIN_B}" x2="{PANEL_W - 10}" y2="{PANEL_H - MARGIN_B}" stroke="black"/>']
    for tick in (0, axis / 2, axis):
        ty = MARGIN_T + plot_h * (1 - tick / axis)
        out.append(f'<text x="{MARGIN_L - 6}" y="{ty + 4:.1f}" font-size="11" text-anchor="end">{tick:g} {unit}</text>')
    group_w = (PANEL_W - MARGIN_L - 20) / len(groups)
    for g, (label, bars) in enumerate(groups):
        gx = MARGIN_L + 10 + g * group_w
        for b, (side, stats) in enumerate(bars):
            bx = gx + b * (BAR_W + 4)
            cx = bx + BAR_W / 2
            out += [f'<rect x="{bx:.1f}" y="{y(stats["median"]):.1f}" width="{BAR_W}" '
                    f'height="{PANEL_H - MARGIN_B - y(stats["median"]):.1f}" fill="{COLORS[side]}">'
                    f'<title>{escape(side)}: median {stats["median"] / scale:.3g} {unit}</title></rect>',
                    f'<line x1="{cx:.1f}" y1="{y(stats["min"]):.1f}" x2="{cx:.1f}" y2="{y(stats["max"]):.1f}" '
                    f'stroke="black"/>',
                    f'<text x="{cx:.1f}" y="{y(stats["max"]) - 4:.1f}" font-size="10" text-anchor="middle">'
                    f'{stats["median"] / scale:.3g}</text>']
        out.append(f'<text x="{gx + len(bars) * (BAR_W + 4) / 2:.1f}" y="{PANEL_H - MARGIN_B + 16}" '
                   f'font-size="12" text-anchor="middle">{escape(label)}</text>')
    out.append("</g>")
    return out


def _legend(report: dict) -> list[str]:
    out = []
    for n, side in enumerate(("vm", "container", "baseline")):
        name = report[side].get("name") if side != "baseline" else "pykvm --version"
        x = MARGIN_L + n * 200
        out += [f'<rect x="{x}" y="{PANEL_H + 4}" width="12" height="12" fill="{COLORS[side]}"/>',
                f'<text x="{x + 16}" y="{PANEL_H + 14}" font-size="12">{escape(f"{side} ({name})")}</text>']
    return out


def svg(report: dict) -> str:
    """The whole picture as SVG text."""
    vm, box, base = report["vm"], report["container"], report["baseline"]
    startup = [(label, [("vm", vm["startup"][key]), ("container", box["startup"][key]),
                        ("baseline", base["startup"][key])])
               for label, key in (("first line", "first_line_s"), ("exit", "exit_s"))]
    memory = [("peak RSS", [(side, report[side]["resources"]["peak_rss_bytes"])
                            for side in ("vm", "container", "baseline")])]
    width, height = 2 * PANEL_W + 20, PANEL_H + 24
    body = (_panel(0, f"startup, {report['runs']} runs (median, min-max)", "s", startup, 1.0)
            + _panel(PANEL_W + 20, "peak RSS (median, min-max)", "MiB", memory, MIB)
            + _legend(report))
    return "\n".join([f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                      f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
                      f'<rect width="{width}" height="{height}" fill="white"/>', *body, "</svg>", ""])


RASTERIZER = "rsvg-convert"      # librsvg's command-line tool (Debian: librsvg2-bin)


def find_rasterizer(path: str) -> str:
    """The program that turns our SVG into a PNG; one clear line if it is missing."""
    import shutil
    program = shutil.which(RASTERIZER)
    if program is None:
        raise ConfigError(f"--plot {path}: a PNG needs {RASTERIZER} (apt-get install librsvg2-bin); "
                          "or write an .svg, which any browser shows")
    return program


def write_plot(report: dict, path: str) -> None:
    """The plot as SVG, or for FILE.png that SVG rasterized by rsvg-convert: pykvm draws
    the picture itself, and leaves pixels and fonts to a library made for them."""
    drawing = svg(report)
    if not path.lower().endswith(".png"):
        with open(path, "w") as f:
            f.write(drawing)
        return
    import subprocess
    done = subprocess.run([find_rasterizer(path), "--format", "png", "--output", path],
                          input=drawing.encode(), capture_output=True)
    if done.returncode != 0:
        raise ConfigError(f"--plot {path}: {RASTERIZER} failed: "
                          f"{done.stderr.decode(errors='replace').strip()[-200:]}")
