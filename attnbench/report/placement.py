"""Point labels placed without overlap (our own greedy placement; no dependency).

Each label tries offsets around its point, nearest first, in rings of growing radius; it takes the
first position whose box (in display pixels, measured with the figure's renderer) overlaps no label
placed before, no point marker and stays inside the axes. A label that finds no free position takes
its least-overlapping one and is counted in the return value so a caller (or a test) can say so;
a label that landed far from its point (or crowded) gets a thin leader line to it. Placement is deterministic:
points are taken by x, then y.
"""

from __future__ import annotations

from matplotlib.transforms import Bbox

DIRECTIONS = (
    (1, 0.4),
    (1, -1.2),
    (-1, 0.4),
    (-1, -1.2),
    (0, 1.2),
    (0, -2.0),
    (1, 1.4),
    (-1, 1.4),
    (1, -2.4),
    (-1, -2.4),
)
RINGS = (6, 14, 26, 40)
MARKER_PX = 6  # half the side of the box kept free around each point
LEADER_PX = 16  # labels placed further than this (points) get a thin line to their point


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(
    ax, points: list[tuple[float, float]], texts: list[str], colors: list[str], fontsize: float = 8
) -> tuple[list, int]:
    """Annotate points (data coordinates) with texts; returns (annotations, labels that overlap)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    markers = [
        Bbox.from_extents(x - MARKER_PX, y - MARKER_PX, x + MARKER_PX, y + MARKER_PX)
        for x, y in (to_px(p) for p in points)
    ]
    frame = ax.get_window_extent(renderer)
    placed: list[Bbox] = []
    out, crowded = [], 0
    for i in sorted(range(len(points)), key=lambda k: points[k]):
        best = None
        for r in RINGS:
            for dx, dy in DIRECTIONS:
                ann = ax.annotate(
                    texts[i],
                    points[i],
                    xytext=(dx * r, dy * r * 0.8),
                    textcoords="offset points",
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="bottom",
                    fontsize=fontsize,
                    color=colors[i],
                )
                box = ann.get_window_extent(renderer).expanded(1.0, 1.0).padded(2)
                cost = sum(_overlap(box, b) for b in placed) + sum(_overlap(box, m) for m in markers)
                cost += (
                    0
                    if (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
                    else 1e6
                )
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, ann, box, (dx * r, dy * r * 0.8))
                else:
                    ann.remove()
                if best[0] == 0:
                    break
            if best[0] == 0:
                break
        cost, ann, box, offset = best
        crowded += cost > 0
        if cost > 0 or max(abs(offset[0]), abs(offset[1])) > LEADER_PX:  # far or crowded: a leader line
            ann.remove()
            ann = ax.annotate(
                texts[i],
                points[i],
                xytext=best[3],
                textcoords="offset points",
                fontsize=fontsize,
                color=colors[i],
                ha=ann.get_ha(),
                va="bottom",
                arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.6},
            )
            box = ann.get_window_extent(renderer)
        placed.append(box)
        out.append(ann)
    return out, crowded
