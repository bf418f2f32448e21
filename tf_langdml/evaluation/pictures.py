"""Pictures for TensorBoard, drawn with matplotlib (Agg, no pyplot state): RGB uint8 arrays (H, W, 3).

- :func:`retrieval_grid`: fixed queries, each followed by its nearest retrievals framed
  green (same class) or red (another class), class names as titles.
- :func:`similarity_figure`: S_img beside S_lang of one batch on one colour scale
  (-1 blue, 0 white, +1 red), class names on the axes and a colour bar.

Both are sized to be read at TensorBoard's default image size (about 1200 px wide).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np

# Retrieval grid layout, in pixels at DPI: every cell is CELL_WIDTH x CELL_HEIGHT, the query column
# is followed by a QUERY_GAP wide gap; within a cell the image is a square of IMAGE_SIDE at the bottom
# centre (MARGIN above the cell's lower edge), the title above it.
DPI = 100
CELL_WIDTH = 190
CELL_HEIGHT = 215
QUERY_GAP = 20
IMAGE_SIDE = 160
MARGIN = 8
FRAME = 9  # frame thickness, px
SAME_CLASS_COLOUR = (0, 170, 0)
OTHER_CLASS_COLOUR = (215, 0, 0)
QUERY_COLOUR = (0, 0, 0)
TITLE_WIDTH = 24  # characters per title line at TITLE_FONT_SIZE
TITLE_FONT_SIZE = 10


def _to_array(figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3]


def short_name(name, width: int = TITLE_WIDTH, lines: int = 2) -> str:
    """A class name wrapped to ``width`` characters per line, at most ``lines`` lines (cut with "…")."""
    wrapped = textwrap.wrap(" ".join(str(name).split()), width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1].rstrip() + "…"
    return "\n".join(wrapped)


def _rgb(image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255] from (H, W), (H, W, 1) or (H, W, 3) values in [0, 255]."""
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or 0 in image.shape:
        raise ValueError(f"images must be (H, W, 3) or (H, W); got shape {image.shape}.")
    return np.clip(np.broadcast_to(image, image.shape[:2] + (3,)), 0, 255)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float (H, W, 3) image (box-averaged first when shrinking by 2x or more)."""
    factor_y, factor_x = max(1, image.shape[0] // height), max(1, image.shape[1] // width)
    if factor_y > 1 or factor_x > 1:
        rows, columns = image.shape[0] // factor_y * factor_y, image.shape[1] // factor_x * factor_x
        image = image[:rows, :columns].reshape(rows // factor_y, factor_y, columns // factor_x, factor_x, 3)
        image = image.mean(axis=(1, 3))

    def axis(target, source):
        position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
        low = np.floor(position).astype(int)
        return low, np.minimum(low + 1, source - 1), (position - low).astype(np.float32)

    y0, y1, wy = axis(height, image.shape[0])
    x0, x1, wx = axis(width, image.shape[1])
    top = image[y0][:, x0] * (1 - wx)[None, :, None] + image[y0][:, x1] * wx[None, :, None]
    bottom = image[y1][:, x0] * (1 - wx)[None, :, None] + image[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def _framed(image, frame_colour) -> np.ndarray:
    """IMAGE_SIDE x IMAGE_SIDE uint8: the image fitted (aspect kept, white around) inside a FRAME px frame."""
    image = _rgb(image)
    inner = IMAGE_SIDE - 2 * FRAME
    scale = inner / max(image.shape[:2])
    height, width = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
    framed = np.empty((IMAGE_SIDE, IMAGE_SIDE, 3), np.float32)
    framed[...] = frame_colour
    framed[FRAME:-FRAME, FRAME:-FRAME] = 255
    top, left = FRAME + (inner - height) // 2, FRAME + (inner - width) // 2
    framed[top : top + height, left : left + width] = _resize(image, height, width)
    return np.round(framed).astype(np.uint8)


def grid_cell_box(row: int, column: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel box of the framed image in cell (row, column) of :func:`retrieval_grid`.

    Column 0 holds the query, columns 1..k its retrievals. The frame is the outer FRAME px.
    """
    left = column * CELL_WIDTH + (QUERY_GAP if column else 0) + (CELL_WIDTH - IMAGE_SIDE) // 2
    bottom = (row + 1) * CELL_HEIGHT - MARGIN
    return bottom - IMAGE_SIDE, left, bottom, left + IMAGE_SIDE


def _retrieval_plot(query_images, query_names, retrieved_images, retrieved_names, same_class, scores=None):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = len(query_images)
    if rows == 0:
        raise ValueError("retrieval_grid needs at least one query.")
    same_class = np.asarray(same_class, bool)
    k = same_class.shape[1] if same_class.ndim == 2 else 0
    if (
        len(query_names) != rows
        or len(retrieved_images) != rows
        or len(retrieved_names) != rows
        or same_class.shape != (rows, k)
        or (scores is not None and np.shape(scores) != (rows, k))
    ):
        raise ValueError(
            f"{rows} queries: query_names, retrieved_images, retrieved_names need {rows} entries and "
            f"same_class (and scores) shape ({rows}, k); got same_class {same_class.shape}."
        )
    width, height = (k + 1) * CELL_WIDTH + QUERY_GAP, rows * CELL_HEIGHT
    canvas = np.full((height, width, 3), 255, np.uint8)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    for row in range(rows):
        query_title = short_name(f"query: {query_names[row]}", width=TITLE_WIDTH - 4, lines=2)
        cells = [(query_images[row], QUERY_COLOUR, query_title, "bold")]
        if len(retrieved_images[row]) != k or len(retrieved_names[row]) != k:
            raise ValueError(
                f"query {row}: {len(retrieved_images[row])} images and {len(retrieved_names[row])} "
                f"names for k = {k} retrievals."
            )
        for column in range(k):
            title = short_name(retrieved_names[row][column], lines=2 if scores is None else 1)
            if scores is not None:
                title += f"\ncos {float(scores[row][column]):.3f}"
            colour = SAME_CLASS_COLOUR if same_class[row, column] else OTHER_CLASS_COLOUR
            cells.append((retrieved_images[row][column], colour, title, "normal"))
        for column, (image, colour, title, weight) in enumerate(cells):
            top, left, bottom, right = grid_cell_box(row, column)
            canvas[top:bottom, left:right] = _framed(image, colour)
            figure.text(
                (left + right) / 2 / width,
                1 - (top - 3) / height,
                title,
                ha="center",
                va="bottom",
                fontsize=TITLE_FONT_SIZE,
                fontweight=weight,
                linespacing=1.1,
                color="black" if column == 0 else tuple(channel / 255 for channel in colour),
            )
    figure.figimage(canvas, 0, 0, origin="upper", zorder=0)  # pixel for pixel, no resampling
    rule = (CELL_WIDTH + QUERY_GAP / 2) / width  # a thin rule between the queries and the retrievals
    figure.add_artist(Line2D([rule, rule], [0.005, 0.995], color="0.6", linewidth=1))
    return figure


def retrieval_grid(
    query_images: Sequence[np.ndarray],
    query_names: Sequence[str],
    retrieved_images: Sequence[Sequence[np.ndarray]],
    retrieved_names: Sequence[Sequence[str]],
    same_class,
    scores=None,
) -> np.ndarray:
    """One row per query: the query (black frame, "query: <class>"), then its k retrievals.

    Each retrieval has a thick green frame when it is of the query's class, red otherwise,
    and its class name (and cosine ``scores[row][column]`` when given) as its title; class
    names are wrapped and cut so that they stay legible. ``query_images``: n images,
    ``retrieved_images``: n lists of k images, (H, W, 3) or (H, W) with values in [0, 255];
    ``same_class``: (n, k) bool. Returns RGB uint8 (n * CELL_HEIGHT, (k + 1) * CELL_WIDTH +
    QUERY_GAP, 3): 1160 x 1720 px for 5 retrievals of 8 queries; :func:`grid_cell_box` gives
    where each image is.
    """
    return _to_array(_retrieval_plot(query_images, query_names, retrieved_images, retrieved_names, same_class, scores))


SIMILARITY_SIZE = (1300, 640)  # (width, height) px of similarity_figure
MAX_TICK_LABELS = 40


def _tick_step(count: int) -> int:
    return max(1, math.ceil(count / MAX_TICK_LABELS))


def _similarity_plot(image_similarity, language_similarity, class_names):
    from matplotlib.figure import Figure

    image_similarity = np.asarray(image_similarity, np.float64)
    count = image_similarity.shape[0]
    if image_similarity.shape != (count, count):
        raise ValueError(f"image_similarity must be square; got shape {image_similarity.shape}.")
    if language_similarity is not None:
        language_similarity = np.asarray(language_similarity, np.float64)
        if language_similarity.shape != image_similarity.shape:
            raise ValueError(
                f"language_similarity has shape {language_similarity.shape}, S_img {image_similarity.shape}."
            )
    if class_names is None:
        class_names = [str(index) for index in range(count)]
    if len(class_names) != count:
        raise ValueError(f"{len(class_names)} class names for a {count} x {count} batch.")
    step = _tick_step(count)
    ticks = np.arange(0, count, step)
    labels = [short_name(class_names[tick], width=22, lines=1) for tick in ticks]
    font_size = 8 if len(ticks) <= 20 else 6.5
    figure = Figure(
        figsize=(SIMILARITY_SIZE[0] / DPI, SIMILARITY_SIZE[1] / DPI), dpi=DPI, facecolor="white", layout="constrained"
    )
    panels = figure.subplots(1, 2)
    shown = None
    for axes, matrix, title in (
        (panels[0], image_similarity, "S_img (image embeddings)"),
        (panels[1], language_similarity, "S_lang (language)"),
    ):
        if matrix is None:
            axes.set_title("S_lang: no language table", fontsize=11)
            axes.text(
                0.5,
                0.5,
                "no language table",
                ha="center",
                va="center",
                fontsize=12,
                color="0.4",
                transform=axes.transAxes,
            )
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_aspect("equal")
            continue
        shown = axes.imshow(matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
        axes.set_title(title, fontsize=11)
        axes.set_xticks(ticks, labels, rotation=90, fontsize=font_size)
        axes.set_yticks(ticks, labels, fontsize=font_size)
        axes.tick_params(length=2, pad=1)
    colour_bar = figure.colorbar(shown, ax=list(panels), shrink=0.85, aspect=30, pad=0.01)
    colour_bar.set_label("cosine similarity", fontsize=10)
    colour_bar.ax.tick_params(labelsize=9)
    return figure


def similarity_figure(image_similarity, language_similarity, class_names: Sequence[str] | None = None) -> np.ndarray:
    """S_img (left) and S_lang (right) of a batch as heat maps on one colour scale, -1..1 ("RdBu_r").

    ``class_names``: the name of each batch row (None: the row numbers), as tick labels on
    both axes (every n-th row when the batch has more than MAX_TICK_LABELS rows).
    ``language_similarity`` None (no language table): the right panel says so. A colour
    bar on the right. Returns RGB uint8 of SIMILARITY_SIZE (1300 x 640 px).
    """
    return _to_array(_similarity_plot(image_similarity, language_similarity, class_names))
