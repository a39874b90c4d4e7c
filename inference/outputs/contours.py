"""Closed planar contours of a mask plane: voxel outlines, one polygon per connected piece.

Why not rt-utils' contours.  rt-utils traces pixel *centres* with OpenCV: a
lesion one or two pixels wide on a slice becomes a contour of 1 or 2 points
with no area (invisible in a viewer), every contour under-states the area by
half a pixel all round, and holes become separate inner contours that systems
taking the union of a plane's contours fill in.

What is written instead.  Each 4-connected piece of the plane becomes one
polygon that follows the outer edges of its pixels, so a single pixel is a
square of 4 points and a contour's area is the pixels' area.  Each hole is
joined to the outline that surrounds it by a zero-width *keyhole* bridge that
runs along a pixel edge (through no pixel centre), so a piece with holes is
still one polygon: the union and the even-odd (XOR) readings of a plane agree,
and no voxel is given up (rt-utils' pin-hole option cuts a channel of voxels
out instead).  Finally every vertex is moved :data:`INSET` of a pixel into the
piece, so the two usual rasterisations both give the mask back exactly:
"pixel centre inside the polygon" (TPS, SlicerRT, matplotlib), and "round the
vertices to pixel centres and fill including the boundary" (OpenCV, rt-utils'
reader).  The inset also keeps pieces that touch only at a corner apart.

Coordinates: a plane is indexed ``[x, y]`` (the volume's ``[i, j]``); pixel
``(x, y)`` has its centre at ``(x, y)`` and its corners at ``x ± 0.5, y ± 0.5``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: how far (in pixels) each vertex is moved inside the piece (see the module docstring)
INSET = 0.01

Corner = tuple[int, int]  # corner (a, b) is the point (a - 0.5, b - 0.5)


def plane_polygons(plane: np.ndarray) -> list[np.ndarray]:
    """Closed polygons ``(n, 2)`` in ``[x, y]`` pixel coordinates, one per 4-connected piece."""
    pieces, count = ndimage.label(np.asarray(plane, bool))  # 2D default: 4-connected
    polygons = []
    for number, box in enumerate(ndimage.find_objects(pieces), start=1):
        if box is None:
            continue
        piece = np.pad(pieces[box] == number, 1)
        origin = np.array([box[0].start - 1, box[1].start - 1], float)
        polygon = _inset(_simplify(_keyhole(_loops(piece))))
        polygons.append(polygon + origin - 0.5)
    return polygons


def _loops(piece: np.ndarray) -> list[list[Corner]]:
    """Boundary loops of one piece, the piece on the left: the outline counter-clockwise
    (in x-y), each hole clockwise."""
    outgoing: dict[Corner, list[Corner]] = {}
    inside = piece
    for dx, dy, start, end in (
        (0, -1, (0, 0), (1, 0)),  # the neighbour below is outside: bottom edge, +x
        (1, 0, (1, 0), (1, 1)),  # right edge, +y
        (0, 1, (1, 1), (0, 1)),  # top edge, -x
        (-1, 0, (0, 1), (0, 0)),  # left edge, -y
    ):
        outside = ~np.roll(inside, (-dx, -dy), axis=(0, 1))
        for x, y in np.argwhere(inside & outside):
            a, b = (int(x) + start[0], int(y) + start[1]), (int(x) + end[0], int(y) + end[1])
            outgoing.setdefault(a, []).append(b)
    loops = []
    while outgoing:
        # a corner with one edge leaving lies on one loop only: start there
        start = next(corner for corner, ends in outgoing.items() if len(ends) == 1)
        loop, previous, current = [start], None, start
        while True:
            previous, current = current, _next_corner(outgoing, previous, current)
            if current == start:
                break
            loop.append(current)
        loops.append(loop)
    return loops


def _next_corner(
    outgoing: dict[Corner, list[Corner]], previous: Corner | None, at: Corner
) -> Corner:
    """Take the edge leaving ``at``; where two leave (pixels touching at a corner), turn left,
    staying with the same pixel, so corner-touching pixels are separate pieces."""
    choices = outgoing[at]
    choice = choices[0]
    if len(choices) > 1 and previous is not None:
        incoming = (at[0] - previous[0], at[1] - previous[1])
        choice = max(choices, key=lambda c: _cross(incoming, (c[0] - at[0], c[1] - at[1])))
    choices.remove(choice)
    if not choices:
        del outgoing[at]
    return choice


def _keyhole(loops: list[list[Corner]]) -> list[Corner]:
    """The outline with every hole joined in along a bridge up a pixel edge.

    Holes are taken top-down by their lowest-``y`` corner (then lowest ``x``);
    from that corner the bridge goes towards lower ``y`` to the first corner of
    the outline or of a hole already joined.  The pixels either side of the
    bridge belong to the piece, so it crosses nothing.
    """
    outline = max(loops, key=_area)
    polygon = list(outline)
    holes = sorted(
        (loop for loop in loops if loop is not outline), key=lambda h: _top(min(h, key=_top))
    )
    corners = {c for loop in loops for c in loop}
    for hole in holes:
        start = hole.index(min(hole, key=_top))
        hole = hole[start:] + hole[:start]
        x, y = hole[0]
        target = next((x, yy) for yy in range(y - 1, -1, -1) if (x, yy) in corners)
        at = polygon.index(target)
        polygon[at + 1 : at + 1] = [*hole, hole[0], target]
    return polygon


def _top(corner: Corner) -> tuple[int, int]:
    return corner[1], corner[0]


def _simplify(polygon: list[Corner]) -> list[Corner]:
    """Drop the corners where the outline goes straight on (keep the bridges' turn-backs)."""
    kept = []
    n = len(polygon)
    for k, here in enumerate(polygon):
        before, after = polygon[k - 1], polygon[(k + 1) % n]
        d_in, d_out = (
            (here[0] - before[0], here[1] - before[1]),
            (after[0] - here[0], after[1] - here[1]),
        )
        if _cross(d_in, d_out) == 0 and d_in[0] * d_out[0] + d_in[1] * d_out[1] > 0:
            continue
        kept.append(here)
    return kept


def _inset(polygon: list[Corner]) -> np.ndarray:
    """Corner coordinates moved :data:`INSET` to the left of both edges at each corner."""
    points = np.asarray(polygon, float)
    d_in = points - np.roll(points, 1, axis=0)
    d_out = np.roll(points, -1, axis=0) - points
    d_in /= np.linalg.norm(d_in, axis=1, keepdims=True)
    d_out /= np.linalg.norm(d_out, axis=1, keepdims=True)
    left_in = np.column_stack([-d_in[:, 1], d_in[:, 0]])
    left_out = np.column_stack([-d_out[:, 1], d_out[:, 0]])
    turn = np.abs(d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]) > 0.5  # a right angle
    offset = np.where(turn[:, None], left_in + left_out, left_in)
    return points + INSET * offset


def _cross(u: tuple[int, int], v: tuple[int, int]) -> int:
    return u[0] * v[1] - u[1] * v[0]


def _area(loop: list[Corner]) -> float:
    """Signed area (shoelace): positive for a counter-clockwise loop."""
    points = np.asarray(loop, float)
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
